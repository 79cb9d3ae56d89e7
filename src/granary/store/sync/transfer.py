"""Copying content-addressed objects: checked against their key on the way, in parallel, within a bandwidth limit."""

from __future__ import annotations

import contextlib
import errno
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, Any

import xxhash

from granary.errors import IntegrityError, SyncError
from granary.store.manifest import decode_segment, parse_envelope

CHUNK_BYTES = 4 * 1024 * 1024
_DATA = re.compile(r"^datasets/[^/]+/data/[0-9a-f]{2}/(?P<digest>[0-9a-f]{32})\.[a-z0-9]+$")
_SEGMENT = re.compile(r"^datasets/[^/]+/segments/(?P<digest>[0-9a-f]{64})\.parquet$")
_MANIFEST = re.compile(r"^datasets/[^/]+/manifests/[0-9a-f]{64}\.json$")

Opener = Callable[[str], IO[bytes]]
Writer = Callable[[str], AbstractContextManager[IO[bytes]]]


class RateLimiter:
    """A token bucket shared by every transfer thread: at most ``bytes_per_s`` on average, bursts of one second."""

    def __init__(self, bytes_per_s: float | None) -> None:
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError(f"the bandwidth limit must be positive, got {bytes_per_s}")
        self.rate = bytes_per_s
        self._tokens = float(bytes_per_s or 0)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Block until ``n`` bytes may pass."""
        if self.rate is None:
            return
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= min(n, self.rate):
                    self._tokens -= n
                    return
                wait_s = (min(n, self.rate) - self._tokens) / self.rate
            time.sleep(wait_s)


def parse_rate(text: str | None) -> float | None:
    """``10M``, ``500K``, ``1.5G`` (bytes per second, powers of 1024) or a plain number; None or ``0`` = unlimited."""
    if text is None or text in ("", "0"):
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?(/s)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"bandwidth limit {text!r} is not like 10M, 500K or 1.5G (bytes per second)")
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[m.group(2).upper()]
    return float(m.group(1)) * scale


class ObjectCheck:
    """Incremental check of an object's bytes against what its key promises."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.kind: str
        self.buf: list[bytes] = []
        self.h: Any = None
        if m := _DATA.match(key):
            self.kind, self.expected, self.h = "data", m.group("digest"), xxhash.xxh3_128()
        elif m := _SEGMENT.match(key):
            self.kind, self.expected = "segment", m.group("digest")  # hashes its decoded entries, not its bytes
        elif _MANIFEST.match(key):
            self.kind, self.expected = "manifest", ""
        else:
            raise SyncError(f"object key {key!r} is not a content-addressed store key; refusing to copy it",
                            hint="only objects named by their content can be checked on arrival")

    def update(self, chunk: bytes) -> None:
        if self.h is not None:
            self.h.update(chunk)
        else:
            self.buf.append(chunk)

    def finish(self) -> None:
        if self.kind == "manifest":
            parse_envelope(b"".join(self.buf), key=self.key)  # raises IntegrityError unless it hashes to its id
            return
        if self.kind == "segment":
            decode_segment(b"".join(self.buf), key=self.key, expected_sha256=self.expected)
            return
        actual = self.h.hexdigest()
        if actual != self.expected:
            raise IntegrityError(f"object {self.key} failed its check in transit (expected {self.expected[:16]}..., "
                                 f"got {actual[:16]}...)", key=self.key, expected=self.expected, actual=actual)


@dataclass
class TransferStats:
    """What a transfer moved."""

    objects: int = 0
    bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    seconds: float = 0.0
    keys: list[str] = field(default_factory=list)

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "bytes": self.bytes, "skipped": self.skipped,
                "skipped_bytes": self.skipped_bytes, "seconds": round(self.seconds, 3),
                "bytes_per_s": round(self.bytes_per_s, 1)}


def copy_object(key: str, src: Opener, dst: Writer, *, limiter: RateLimiter,
                on_bytes: Callable[[int], None] | None = None) -> int:
    """Stream one object from ``src`` to ``dst``, checking it against its key; nothing appears at ``dst`` on failure."""
    check = ObjectCheck(key)
    size = 0
    with src(key) as fin, dst(key) as fout:
        while True:
            chunk = fin.read(CHUNK_BYTES)
            if not chunk:
                break
            limiter.take(len(chunk))
            check.update(chunk)
            fout.write(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
        check.finish()  # raising here aborts the writer: the object never appears
    return size


def copy_many(keys: Iterable[tuple[str, int]], src: Opener, dst: Writer, *, jobs: int = 8,
              limiter: RateLimiter | None = None, on_bytes: Callable[[int], None] | None = None,
              on_object: Callable[[str], None] | None = None, in_order: bool = False,
              dest: str = "the destination") -> TransferStats:
    """Copy objects in parallel (``jobs`` threads); the first failure stops the rest and is raised.

    By default the largest objects go first (the tail stays short); ``in_order`` with ``jobs=1`` copies them one by
    one in the order given (manifests, oldest first, so a manifest on the far side implies its ancestors').
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    limiter = limiter or RateLimiter(None)
    stats = TransferStats()
    lock = threading.Lock()
    t0 = time.perf_counter()
    stop = threading.Event()

    def one(key: str) -> None:
        if stop.is_set():
            return
        n = copy_object(key, src, dst, limiter=limiter, on_bytes=on_bytes)
        with lock:
            stats.objects += 1
            stats.bytes += n
            stats.keys.append(key)
        if on_object is not None:
            on_object(key)

    listed = list(keys)
    if in_order and jobs != 1:
        raise ValueError("in_order copies need jobs=1")
    todo = [k for k, _size in (listed if in_order else sorted(listed, key=lambda kv: -kv[1]))]
    # ``jobs`` threads take keys from one shared iterator: a future per object cost more than copying a small
    # object (thread-pool bookkeeping was ~10% of a 2,000-object push of 50 KB shards)
    pending = iter(todo)
    take = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while not stop.is_set():
            with take:
                key = next(pending, None)
            if key is None:
                return
            try:
                one(key)
            except BaseException as exc:  # the first failure stops every worker and is raised below
                errors.append(exc)
                stop.set()

    threads = [threading.Thread(target=worker, name=f"granary-sync-{i}", daemon=True)
               for i in range(min(jobs, len(todo)))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise _explained(errors[0], dest, stats)
    stats.seconds = time.perf_counter() - t0
    return stats


def _explained(exc: BaseException, dest: str, stats: TransferStats) -> BaseException:
    """A full disk or quota on the receiving side, said plainly (what was sent stays: a rerun skips it)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        err = SyncError(f"no space left on {dest} after {stats.objects} objects ({stats.bytes:,} bytes) were "
                        f"written: {exc.strerror}; nothing that was incomplete is visible there and no ref moved",
                        hint="free space (or grow the volume) and run the same command again: objects already "
                             "there are not sent again")
        err.__cause__ = exc
        return err
    return exc


@contextlib.contextmanager
def publishing_writer(objects: Any, label: str) -> Iterator[Writer]:
    """Writers into a local object store (pull, restore): each object goes to a staging file and is published under
    its key only once complete and checked; the staging folder is removed at the end."""
    staging = objects.staging_dir(f"{label}-{uuid.uuid4().hex}")

    @contextlib.contextmanager
    def writer(key: str) -> Iterator[IO[bytes]]:
        path = staging / uuid.uuid4().hex
        try:
            with open(path, "wb") as f:
                yield f
            objects.publish_file(path, key)
        finally:
            path.unlink(missing_ok=True)

    try:
        yield writer
    finally:
        objects.remove_staging(staging.name)
