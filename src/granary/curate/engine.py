"""What one task does: run one segment of a pipeline over one unit of input and record the outcome.

Tasks are plain functions of picklable arguments, so any executor (processes, Ray) can run them; a task
writes everything it produces under the run directory and its completion record last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from granary.config import Settings
from granary.curate.errors import StepFailedError
from granary.curate.readers import ReaderConfig, Unit, read_unit
from granary.curate.spec import PipelineSpec
from granary.curate.step import DocBatch, GlobalStep, Step, StepStats, empty_rejected, timed
from granary.curate.workdir import RunDir
from granary.curate.writers.sink import Sink, store_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """Segment `segment` of `spec` over `unit`."""

    spec: PipelineSpec
    segment: int
    unit: Unit
    run_dir: str
    reader: ReaderConfig
    sink: Sink
    settings: Settings | None
    shard_size_bytes: int


def run_task(task: Task) -> dict[str, Any]:
    """Run one task (skipped if its completion record exists) and return that record."""
    rd = RunDir(Path(task.run_dir))
    done = rd.done(task.segment, task.unit.index)
    record = rd.read_json(done)
    if record is not None:
        return record
    record = _TaskRun(task, rd).run()
    rd.write_json(done, record)
    return record


class _TaskRun:
    def __init__(self, task: Task, rd: RunDir) -> None:
        self.task = task
        self.rd = rd
        segs = task.spec.segments()
        self.seg = segs[task.segment]
        self.prev: GlobalStep | None = None
        if task.segment > 0:
            boundary = segs[task.segment - 1].boundary
            assert boundary is not None
            step = boundary.build()
            assert isinstance(step, GlobalStep)
            self.prev = step
        self.steps: list[Step] = [c.build() for c in self.seg.local]
        self.boundary: GlobalStep | None = None
        if self.seg.boundary is not None:
            b = self.seg.boundary.build()
            assert isinstance(b, GlobalStep)
            self.boundary = b
        self.stats: dict[str, StepStats] = {}
        self.current = "reader"

    def run(self) -> dict[str, Any]:
        t = self.task
        k, unit = t.segment, t.unit.index
        t0 = time.perf_counter()
        rejected: list[pa.Table] = []
        collected: list[dict[str, np.ndarray]] = []
        entries: list[dict[str, Any]] = []
        buffer: list[pa.Table] = []
        buffered = 0
        writer: pq.ParquetWriter | None = None
        out_tmp = self.rd.out(k, unit).with_suffix(".tmp")
        rows_in = rows_out = 0
        try:
            for table in _by_bytes(self._input(), t.spec.batch_bytes, t.spec.text_column):
                if self._full_decision is not None:  # rows of the previous segment's output, in order
                    self._decision = _slice_decision(self._full_decision, rows_in, table.num_rows)
                rows_in += table.num_rows
                batch = self._process(table, rows_in - table.num_rows)
                rejected.append(batch.rejected())
                batch.compact()
                rows_out += batch.num_rows
                if self.boundary is not None:
                    collected.append(self._collect(batch))
                    writer = _append(writer, out_tmp, batch.table)
                elif batch.num_rows:
                    buffer.append(batch.table)
                    buffered += batch.table.nbytes
                    if buffered >= t.shard_size_bytes:
                        entries.append(t.sink.write(_concat(buffer)))
                        buffer, buffered = [], 0
        except StepFailedError:
            raise
        except Exception as exc:  # task boundary: name the step and the unit, keep completed units
            # re-raised with its facts; the traceback is for debugging only (users see message + hint)
            log.debug("step %s failed on unit %d (%s)", self.current, unit, t.unit.label, exc_info=True)
            raise StepFailedError(self.current, unit, f"{type(exc).__name__}: {exc}") from exc
        if buffer:
            entries.append(t.sink.write(_concat(buffer)))
        if writer is not None:
            writer.close()
            out_tmp.replace(self.rd.out(k, unit))
        if self.boundary is not None:
            if not collected:  # nothing survived: typed empty keys keep the unit's place in the global phase
                empty = pa.table({"id": pa.array([], pa.string()), t.spec.text_column: pa.array([], pa.string())})
                collected.append(self.boundary.collect(DocBatch(empty, text_column=t.spec.text_column)))
            _save_npz(self.rd.collect(k, unit), collected)
        rej = _ordered(_concat(rejected), self._step_order()) if rejected else empty_rejected()
        if rej.num_rows:
            pq.write_table(rej, self.rd.rejected(k, unit))
        reasons = _reason_counts(rej)
        for name, counts in reasons.items():
            for reason, n in counts.items():
                st = self.stats.setdefault(name, StepStats())
                st.counters[reason] = st.counters.get(reason, 0) + n
        return {"unit": unit, "segment": k, "rows_in": rows_in, "rows_out": rows_out, "entries": entries,
                "rejected": rej.num_rows, "quarantined": self._quarantined, "has_out": writer is not None,
                "stats": {n: s.to_dict() for n, s in self.stats.items()},
                "seconds": time.perf_counter() - t0}

    _quarantined = 0

    def _input(self) -> Iterator[pa.Table]:
        t = self.task
        if t.segment == 0:
            from granary.store.ingest.sink import BadRecordSink

            sink = BadRecordSink("quarantine")
            store = store_for(t.settings) if t.unit.kind == "shard" and t.settings is not None else None
            yield from read_unit(t.unit, store=store, sink=sink, batch_rows=t.spec.batch_rows,
                                 max_doc_bytes=t.reader.max_doc_bytes)
            sink.flush()
            if sink.tables:
                q = pa.concat_tables(sink.tables)
                pq.write_table(q, self.rd.quarantine(t.unit.index))
                self._quarantined = q.num_rows
            return
        src = self.rd.out(t.segment - 1, t.unit.index)
        if not src.exists():
            return
        self._full_decision = dict(np.load(self.rd.decision(t.segment - 1, t.unit.index)))
        for rb in pq.ParquetFile(src).iter_batches(batch_size=t.spec.batch_rows):
            yield pa.Table.from_batches([rb])

    _decision: dict[str, np.ndarray] = {}
    _full_decision: dict[str, np.ndarray] | None = None

    def _process(self, table: pa.Table, row_offset: int) -> DocBatch:
        batch = DocBatch(table, text_column=self.task.spec.text_column, row_offset=row_offset)
        if self.prev is not None:
            prev = self.prev
            self._run(prev, batch, lambda: prev.apply(batch, self._decision))
        for step in self.steps:
            self._run(step, batch, lambda s=step: s.process(batch))
        return batch

    def _run(self, step: Step, batch: DocBatch, fn: Any) -> None:
        self.current = step.name
        stats = self.stats.setdefault(step.name, StepStats())
        timed(step, batch, fn, stats)
        take = getattr(step, "take_counters", None)
        if take is not None:
            for key, v in take().items():
                stats.counters[key] = stats.counters.get(key, 0) + v

    def _step_order(self) -> dict[str, int]:
        return {c.display: i for i, c in enumerate(self.task.spec.steps)}

    def _collect(self, batch: DocBatch) -> dict[str, np.ndarray]:
        assert self.boundary is not None
        self.current = self.boundary.name
        stats = self.stats.setdefault(self.boundary.name, StepStats())
        t0 = time.perf_counter()
        out = self.boundary.collect(batch)
        stats.seconds += time.perf_counter() - t0
        return out


def _ordered(rej: pa.Table, order: dict[str, int]) -> pa.Table:
    """Rejected rows by step (pipeline order), then input position: independent of batch boundaries."""
    if rej.num_rows == 0:
        return rej.drop_columns(["_pos"]) if "_pos" in rej.column_names else rej
    rank = pa.array([order.get(s, len(order)) for s in rej.column("step").to_pylist()], pa.int32())
    keyed = rej.append_column("_rank", rank)
    idx = pc.sort_indices(keyed, sort_keys=[("_rank", "ascending"), ("_pos", "ascending")])
    return rej.take(idx).drop_columns(["_pos"])


def _by_bytes(tables: Iterator[pa.Table], limit: int, text_column: str) -> Iterator[pa.Table]:
    """Cut tables into slices of about `limit` bytes of text (at least one row each)."""
    for table in tables:
        if table.num_rows <= 1 or table.nbytes <= limit:
            yield table
            continue
        sizes = pc.binary_length(table.column(text_column)).to_numpy(zero_copy_only=False)
        ends = np.cumsum(np.nan_to_num(sizes.astype(np.float64)))
        cuts = np.searchsorted(ends, np.arange(limit, ends[-1], limit), side="right")
        start = 0
        for cut in [*np.unique(cuts).tolist(), table.num_rows]:
            cut = max(cut, start + 1)
            if cut > start and start < table.num_rows:
                yield table.slice(start, min(cut, table.num_rows) - start)
                start = min(cut, table.num_rows)


def _append(writer: pq.ParquetWriter | None, path: Path, table: pa.Table) -> pq.ParquetWriter:
    if writer is None:
        writer = pq.ParquetWriter(path, table.schema, compression="zstd", compression_level=1)
    writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)
    return writer


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def _save_npz(path: Path, parts: list[dict[str, np.ndarray]]) -> None:
    keys = parts[0].keys() if parts else []
    merged = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **merged)  # type: ignore[arg-type]
    tmp.replace(path)


def _slice_decision(decision: dict[str, np.ndarray], offset: int, n: int) -> dict[str, np.ndarray]:
    rows = decision["rows"]
    lo, hi = np.searchsorted(rows, [offset, offset + n])
    out = {k: v[lo:hi] for k, v in decision.items()}
    out["rows"] = rows[lo:hi] - offset
    return out


def _reason_counts(rej: pa.Table) -> dict[str, dict[str, int]]:
    if rej.num_rows == 0:
        return {}
    base = pc.replace_substring_regex(rej.column("reason"), pattern=r":.*$", replacement="")
    grouped = pa.table({"step": rej.column("step"), "reason": base}).group_by(["step", "reason"]).aggregate(
        [([], "count_all")])
    out: dict[str, dict[str, int]] = {}
    for row in grouped.to_pylist():
        out.setdefault(row["step"], {})[row["reason"]] = row["count_all"]
    return out
