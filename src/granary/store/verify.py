"""Verification: recompute every checksum of a version (or of all versions) and report every problem."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from granary.errors import IntegrityError, NotFoundError
from granary.store.formats.tokens import TokenShardReader
from granary.store.manifest import ShardEntry
from granary.store.shard import check_object

if TYPE_CHECKING:
    from granary.store.model import VersionInfo
    from granary.store.store import Store


@dataclass(frozen=True)
class Problem:
    """One thing verification found wrong."""

    version: str
    kind: str  # missing-manifest, bad-manifest, missing-shard, bad-shard, bad-block, dangling-ref
    key: str
    message: str
    shard: int | None = None
    expected: str | None = None
    actual: str | None = None


@dataclass
class VerifyReport:
    """What was checked and what was wrong."""

    versions: int = 0
    shards: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    expired_refs: list[str] = field(default_factory=list)  # refs on expired versions: expected after forget

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def throughput_bytes_s(self) -> float:
        return self.bytes / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "versions": self.versions,
            "shards": self.shards,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "problems": [p.__dict__ for p in self.problems],
            "expired_refs": list(self.expired_refs),
        }


def verify(
    store: Store,
    ref: str | None = None,
    *,
    deep: bool = True,
    on_shard: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check a version (``ref``), or every live version when ``ref`` is None.

    Each shard (and side-table shard) must exist with its recorded size and xxh3-128; token shards
    must also pass every block checksum (``deep``). The manifest and its segments must hash to
    what refers to them, and every branch and tag must point at a recorded version.

    Args:
        store: the store.
        ref: a reference, a dataset name (its default branch) or None for everything.
        deep: check token blocks too.
        on_shard: called with the byte size of every shard checked (progress bars).
    """
    report = VerifyReport()
    start = time.perf_counter()
    if ref is None:
        targets = [v for v in store.versions() if v.state == "live"]
        _check_refs(store, report)
    else:
        targets = [store.resolve(ref)]
    seen: set[str] = set()
    for version in targets:
        store.gate.allow("verify", version.dataset, version=version.id)  # authorised and audited
        _verify_version(store, version, report, seen, deep=deep, on_shard=on_shard)
    report.seconds = time.perf_counter() - start
    return report


def _verify_version(
    store: Store, version: VersionInfo, report: VerifyReport, seen: set[str], *, deep: bool,
    on_shard: Callable[[int], None] | None,
) -> None:
    report.versions += 1
    try:
        manifest = store._load_manifest(version.manifest_key, expected_id=version.id)
    except IntegrityError as exc:
        kind = "missing-manifest" if "missing" in str(exc) else "bad-manifest"
        report.problems.append(Problem(version.id, kind, exc.key or version.manifest_key, Exception.__str__(exc)))
        return
    entries: list[tuple[int | None, ShardEntry]] = list(enumerate(manifest.shards))
    for table_entries in manifest.tables.values():
        entries.extend((None, e) for e in table_entries)
    for index, entry in entries:
        if entry.key in seen:
            continue
        seen.add(entry.key)
        _verify_shard(store, version.id, index, entry, report, deep=deep)
        if on_shard is not None:
            on_shard(entry.bytes)


def _verify_shard(store: Store, vid: str, index: int | None, entry: ShardEntry, report: VerifyReport, *,
                  deep: bool) -> None:
    report.shards += 1
    try:
        check_object(store.objects, entry, shard=index)
    except IntegrityError as exc:
        kind = "missing-shard" if exc.actual is None and "missing" in str(exc) else "bad-shard"
        report.problems.append(Problem(vid, kind, entry.key, Exception.__str__(exc), index, exc.expected, exc.actual))
        return
    report.bytes += entry.bytes
    if deep and entry.format == "tokens" and "enc" not in entry.meta:
        path = store.objects.local_path(entry.key)  # plaintext token shard, under the verify decision above
        try:
            reader = TokenShardReader(path if path else store.objects.get_bytes(entry.key), name=entry.key)
            bad = reader.verify()
        except IntegrityError as exc:
            report.problems.append(Problem(vid, "bad-shard", entry.key, Exception.__str__(exc), index))
            return
        for block in bad:
            report.problems.append(Problem(vid, "bad-block", entry.key, f"block {block} failed its checksum", index))


def _check_refs(store: Store, report: VerifyReport) -> None:
    """Every branch and tag must point at a recorded version; one on an expired version (a tag kept after
    ``granary forget`` or a retention policy) is expected state, listed in ``expired_refs``, not damage."""
    from granary.store import refs as R

    for ds in store.datasets():
        for ref in store.refs(ds.name):
            if ref.version_id is None:
                continue
            try:
                with store.catalog.read() as conn:
                    version = R.get_version(conn, ref.version_id)
            except NotFoundError as exc:
                report.problems.append(Problem(ref.version_id, "dangling-ref", f"{ds.name}@{ref.name}",
                                               Exception.__str__(exc)))
                continue
            if version.state != "live":
                report.expired_refs.append(f"{ref.kind}:{ds.name}@{ref.name} -> {version.short_id} "
                                           f"({version.state})")
