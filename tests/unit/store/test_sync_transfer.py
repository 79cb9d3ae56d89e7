"""Object transfers: every object is checked against its content address, the bandwidth cap holds, failures leave
nothing behind."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.errors import IntegrityError, SyncError
from granary.store.sync.remote import Remote
from granary.store.sync.transfer import RateLimiter, copy_many, copy_object, parse_rate


def _data_key(data: bytes) -> str:
    digest = xxhash.xxh3_128(data).hexdigest()
    return f"datasets/d/data/{digest[:2]}/{digest}.parquet"


def _source(objects: dict[str, bytes]):  # type: ignore[no-untyped-def]
    return lambda key: io.BytesIO(objects[key])


@given(st.lists(st.binary(min_size=0, max_size=5000), min_size=1, max_size=12, unique=True))
@settings(max_examples=12, deadline=None)
def test_copied_objects_arrive_byte_identical(tmp_path_factory: pytest.TempPathFactory, blobs: list[bytes]) -> None:
    remote = Remote(str(tmp_path_factory.mktemp("r")))
    objects = {_data_key(b): b for b in blobs}
    stats = copy_many(((k, len(v)) for k, v in objects.items()), _source(objects), remote.writer, jobs=4)
    assert stats.objects == len(objects)
    assert stats.bytes == sum(len(v) for v in objects.values())
    for key, data in objects.items():
        assert remote.get_object(key) == data


def test_a_corrupted_object_is_refused_and_never_appears(tmp_path: Path) -> None:
    remote = Remote(str(tmp_path / "r"))
    good = b"the real bytes" * 100
    key = _data_key(good)
    with pytest.raises(IntegrityError, match="failed its check in transit"):
        copy_object(key, lambda _k: io.BytesIO(good[:-1] + b"X"), remote.writer, limiter=RateLimiter(None))
    assert not remote.has_object(key)
    assert remote.list_objects("datasets") == {}  # no temporary file is left either


def test_a_damaged_manifest_is_refused(tmp_path: Path) -> None:
    remote = Remote(str(tmp_path / "r"))
    key = "datasets/d/manifests/" + "a" * 64 + ".json"
    with pytest.raises(IntegrityError):
        copy_object(key, lambda _k: io.BytesIO(b'{"format": "granary.manifest/1"}'), remote.writer,
                    limiter=RateLimiter(None))
    assert not remote.has_object(key)


def test_keys_that_are_not_content_addresses_are_refused(tmp_path: Path) -> None:
    remote = Remote(str(tmp_path / "r"))
    with pytest.raises(SyncError, match="not a content-addressed"):
        copy_object("../../etc/passwd", lambda _k: io.BytesIO(b""), remote.writer, limiter=RateLimiter(None))


def test_the_first_failure_stops_the_transfer_and_is_raised(tmp_path: Path) -> None:
    remote = Remote(str(tmp_path / "r"))
    objects = {_data_key(bytes([i]) * 1000): bytes([i]) * 1000 for i in range(20)}
    bad = next(iter(objects))

    def src(key: str) -> IO[bytes]:
        if key == bad:
            raise OSError("disk read error")
        return io.BytesIO(objects[key])

    with pytest.raises(OSError, match="disk read error"):
        copy_many(((k, len(v)) for k, v in objects.items()), src, remote.writer, jobs=3)
    assert bad not in remote.list_objects("datasets")


def test_the_bandwidth_cap_bounds_the_rate(tmp_path: Path) -> None:
    remote = Remote(str(tmp_path / "r"))
    blobs = [bytes([i]) * 200_000 for i in range(6)]  # 1.2 MB at 1 MB/s: at least ~0.2 s beyond the first burst
    objects = {_data_key(b): b for b in blobs}
    t0 = time.perf_counter()
    copy_many(((k, len(v)) for k, v in objects.items()), _source(objects), remote.writer, jobs=3,
              limiter=RateLimiter(1_000_000))
    assert time.perf_counter() - t0 >= 0.15


@pytest.mark.parametrize(("text", "value"), [("10M", 10 * 1024**2), ("500K", 500 * 1024), ("1.5G", 1.5 * 1024**3),
                                             ("2048", 2048.0), ("0", None), (None, None), ("20MB/s", 20 * 1024**2)])
def test_parse_rate(text: str | None, value: float | None) -> None:
    assert parse_rate(text) == value


def test_parse_rate_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="not like 10M"):
        parse_rate("fast")


@contextmanager
def _noop(_key: str) -> Iterator[IO[bytes]]:
    yield io.BytesIO()


def test_jobs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="jobs"):
        copy_many([], _source({}), _noop, jobs=0)


def test_in_order_copies_keep_the_given_order_whatever_the_sizes(tmp_path: Path) -> None:
    """Manifests travel oldest first (a manifest on the far side implies its ancestors'), even when the newest is
    the largest: the default order (largest first) must not apply to them."""
    remote = Remote(str(tmp_path / "r"))
    blobs = [bytes([i]) * (100 + 1000 * i) for i in range(5)]  # growing sizes
    objects = {_data_key(b): b for b in blobs}
    seen: list[str] = []
    copy_many(((k, len(v)) for k, v in objects.items()), _source(objects), remote.writer, jobs=1, in_order=True,
              on_object=seen.append)
    assert seen == list(objects)
    seen.clear()
    copy_many(((k, len(v)) for k, v in objects.items()), _source(objects), Remote(str(tmp_path / "r2")).writer,
              jobs=1, on_object=seen.append)
    assert seen == list(objects)[::-1]  # largest first by default
    with pytest.raises(ValueError, match="jobs=1"):
        copy_many([], _source({}), remote.writer, jobs=2, in_order=True)
