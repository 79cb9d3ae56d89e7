"""The ingestion loop: poll micro-batches, commit each as a version with its offset, then acknowledge."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from granary.live.decode import PayloadFormat, decode
from granary.live.dedup import KeyIndex
from granary.live.offsets import advance, read_offset
from granary.live.pump import SourcePump
from granary.live.source import MessageSource, Polled
from granary.store.model import VersionInfo
from granary.store.store import Store

if TYPE_CHECKING:
    from granary.curate.tabular import TabularPipeline

log = logging.getLogger(__name__)
WAIT_S = 0.05  # the longest the loop waits on the pump before looking at the clock and the stream again


@dataclass(kw_only=True, frozen=True)
class IngestConfig:
    """How a stream becomes versions.

    Attributes:
        dataset: the ``table`` dataset to commit to (created if missing).
        branch: the branch (default: the dataset's default branch).
        every_s: commit at least this often while messages arrive.
        batch_records: commit as soon as this many messages are buffered.
        max_records: stop after committing this many messages (None: run until stopped or idle).
        idle_stop_s: stop after this long without any message (None: never).
        poll_records: messages asked for in one read.
        fmt: message body format (``json`` or ``raw``).
        schema: column types for ``json`` bodies (None: inferred from the first batch, then kept).
        pipeline: a tabular pipeline run on each micro-batch before its commit (its quarantined rows join the
            version's quarantine; its fitted statistics and step facts go into the version's lineage).
        dedup_keys: key columns: a record whose key the branch already holds (from any earlier micro-batch, or
            earlier in its own) is not committed; each version's lineage counts them (``duplicates``).
    """

    dataset: str
    branch: str | None = None
    every_s: float = 5.0
    batch_records: int = 200_000
    max_records: int | None = None
    idle_stop_s: float | None = None
    poll_records: int = 20_000
    fmt: PayloadFormat = "json"
    schema: pa.Schema | None = None
    pipeline: TabularPipeline | None = None
    dedup_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {self.every_s}")
        if self.batch_records < 1 or self.poll_records < 1:
            raise ValueError("batch_records and poll_records must be >= 1")
        if self.max_records is not None and self.max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {self.max_records}")


@dataclass
class IngestStats:
    """What a run did."""

    records: int = 0
    quarantined: int = 0
    duplicates: int = 0
    commits: int = 0
    seconds: float = 0.0
    position: str | None = None
    lag: int | None = None
    versions: list[str] = field(default_factory=list)

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class StreamIngester:
    """Commit a message source into a dataset exactly once.

    Each micro-batch is one commit. The source's position after the batch is written in the same catalog
    transaction as the version (``Transaction.add_catalog_write``, compare-and-swap from the position the
    batch started at), and messages are acknowledged only after that transaction. A crash before it leaves
    neither rows nor offset (the batch is read again); a crash after it leaves both, and the restart
    resumes after the recorded position, so acknowledgements lost in the crash do not duplicate rows.
    A pump thread reads ahead while a batch is committed, up to twice ``batch_records``; past that it
    stops reading, so a slow store holds messages back in the broker (backpressure). The lag the source
    reports is kept in the stats.
    """

    def __init__(self, store: Store, source: MessageSource, config: IngestConfig,
                 *, on_commit: Callable[[IngestStats], None] | None = None) -> None:
        self.store, self.source, self.config = store, source, config
        self.on_commit = on_commit
        info = store.create_dataset(config.dataset, kind="table", exist_ok=True,
                                    description=f"ingested from {source.url}")
        self.branch = config.branch or info.default_branch
        self._stop = False
        self._index = KeyIndex(config.dedup_keys) if config.dedup_keys else None

    def stop(self) -> None:
        """Ask the loop to finish after the current micro-batch (safe from a signal handler)."""
        self._stop = True

    def run(self) -> IngestStats:
        """Ingest until ``max_records``, ``idle_stop_s`` or :meth:`stop`; returns the stats."""
        cfg = self.config
        stats = IngestStats()
        offset = read_offset(self.store.catalog, self.source.url, cfg.dataset, self.branch)
        position = offset.position if offset else None
        stats.position = position
        if self._index is not None:
            self._index.load(self.store, self._head_ref())
        pump = SourcePump(self.source, poll_records=min(cfg.poll_records, cfg.batch_records),
                          max_buffered=2 * cfg.batch_records,
                          limit=cfg.max_records)
        pump.start(position)
        t0 = time.perf_counter()
        try:
            while not self._stop:
                want = cfg.batch_records
                if cfg.max_records is not None:
                    want = min(want, cfg.max_records - stats.records)
                    if want <= 0:
                        break
                batches = self._gather(pump, want)
                if not batches:
                    if cfg.idle_stop_s is not None:
                        break
                    continue
                position = self._commit(batches, position, stats)
                for b in batches:
                    pump.ack(b)
                stats.seconds = time.perf_counter() - t0
                if self.on_commit is not None:
                    self.on_commit(stats)
        finally:
            stats.seconds = time.perf_counter() - t0
            pump.close()
            stats.lag = pump.lag
        return stats

    def _head_ref(self) -> str | None:
        """The branch head to index keys from (None while the branch has no version)."""
        ref = f"{self.config.dataset}@{self.branch}"
        try:
            self.store.resolve(ref)
        except LookupError:
            return None
        return ref

    def _gather(self, pump: SourcePump, want: int) -> list[Polled]:
        """Batches worth about ``want`` messages, until ``every_s``, or a pause in the stream once some arrived."""
        cfg = self.config
        out: list[Polled] = []
        got = 0
        deadline = 0.0  # set by the first message: every_s counts from there
        while got < want and not self._stop:
            now = time.monotonic()
            if out and now >= deadline:
                break
            polled = pump.get(min(deadline - now, WAIT_S) if out else WAIT_S)
            if polled is None:
                idle = pump.idle_s()
                if (out and idle > 0) or (not out and cfg.idle_stop_s is not None and idle >= cfg.idle_stop_s):
                    break  # the stream paused with messages buffered (commit them now), or stayed idle (stop)
                continue
            if not out:
                deadline = time.monotonic() + cfg.every_s
            out.append(polled)
            got += len(polled)
        return out

    def _commit(self, batches: list[Polled], position: str | None, stats: IngestStats) -> str:
        cfg = self.config
        payloads = [p for b in batches for p in b.payloads]
        positions = pa.concat_arrays([b.positions for b in batches]) if len(batches) > 1 else batches[0].positions
        last = batches[-1].last
        with self.store.transaction(cfg.dataset, branch=self.branch) as txn:
            decoded = decode(payloads, positions, fmt=cfg.fmt, schema=cfg.schema or _data_schema(txn.schema))
            curated: dict[str, Any] = {}
            rows = decoded.table
            if cfg.pipeline is not None and rows is not None and rows.num_rows:
                from granary.curate.tabular import run_tabular

                result = run_tabular(cfg.pipeline, rows, with_profile=False)
                rows = result.table
                curated = {"pipeline": cfg.pipeline.name, "fitted": result.fitted, "steps": result.report}
                if result.quarantine.num_rows:
                    txn.write_side_table("curate_quarantine", result.quarantine)
                    stats.quarantined += result.quarantine.num_rows
            duplicates = 0
            if self._index is not None and rows is not None and rows.num_rows:
                rows, duplicates = self._index.filter(rows, where=f"{self.source.url} through {last}")
            if rows is not None and rows.num_rows:
                txn.write(rows)
            if decoded.quarantine is not None and decoded.quarantine.num_rows:
                txn.write_side_table("quarantine", decoded.quarantine)
            txn.add_catalog_write(lambda conn, version: advance(
                conn, source=self.source.url, dataset=cfg.dataset, branch=self.branch, expected=position,
                position=last, records=len(payloads), version_id=version.id))
            version: VersionInfo = txn.commit(
                message=f"ingest {len(payloads)} messages from {self.source.url} through {last}",
                lineage={"ingest-stream": {"source": self.source.url, "from": positions[0].as_py(), "through": last,
                                           "records": len(payloads), "quarantined": decoded.bad,
                                           **({"curate": curated} if curated else {}),
                                           **({"duplicates": duplicates} if self._index is not None else {})}},
                allow_empty=True)
        if self._index is not None:
            self._index.commit()
        stats.records += len(payloads)
        stats.quarantined += decoded.bad
        stats.duplicates += duplicates
        stats.commits += 1
        stats.position = last
        stats.versions.append(version.id)
        return last


def _data_schema(schema: pa.Schema | None) -> pa.Schema | None:
    """The committed schema without the position column: later batches are read with the first batch's types."""
    if schema is None:
        return None
    from granary.live.decode import POSITION_COLUMN

    return pa.schema([f for f in schema if f.name != POSITION_COLUMN])
