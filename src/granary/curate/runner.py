"""The coordinator: plans units, runs each segment's tasks on an executor, runs global phases, commits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import granary
from granary.config import Settings
from granary.curate.engine import Task, run_task
from granary.curate.errors import PipelineSpecError
from granary.curate.executors import Executor, make_executor
from granary.curate.readers import ReaderConfig, Unit, plan_units
from granary.curate.spec import PipelineSpec
from granary.curate.step import GlobalStep, StepStats, empty_rejected
from granary.curate.workdir import RunDir
from granary.curate.writers.sink import Sink, store_for

log = logging.getLogger(__name__)

StageCallback = Callable[[str, int], Callable[[int], None]]


@dataclass
class RunResult:
    """What a pipeline run did.

    Attributes:
        run_id: identifies the run (same spec, input and output: same id, so a rerun resumes).
        output: facts from the sink (version id, rows...).
        steps: per-step counters, in pipeline order.
        globals: per global step, what its whole-dataset phase found.
        rows_in / rows_out / rejected / quarantined: document counts.
        seconds: wall time of this invocation.
        resumed_tasks: tasks skipped because an earlier (interrupted) run completed them.
        resumed: this run continued an interrupted run of the same pipeline, input and output.
    """

    run_id: str
    output: dict[str, Any]
    steps: dict[str, StepStats]
    globals: dict[str, dict[str, Any]]
    rows_in: int
    rows_out: int
    rejected: int
    quarantined: int
    seconds: float
    resumed_tasks: int = 0
    resumed: bool = False
    workdir: str = ""
    lineage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        d = dataclasses.asdict(self)
        d["steps"] = {k: v.to_dict() for k, v in self.steps.items()}
        d.pop("lineage")
        return d


def run_id_for(spec: PipelineSpec, reader: ReaderConfig, facts: dict[str, Any], units: list[Unit],
               sink: Sink) -> str:
    """A stable id: the same pipeline over the same input into the same output resumes."""
    ident: dict[str, Any] = {"spec": spec.to_dict(), "reader": dataclasses.asdict(reader), "sink": repr(sink)}
    if "input_version" in facts:
        ident["input"] = facts["input_version"]
    else:
        files = [u.payload if isinstance(u.payload, str) else list(u.payload) for u in units]
        flat = [f for x in files for f in ([x] if isinstance(x, str) else x)]
        ident["input"] = [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in flat]
    raw = json.dumps(ident, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def run_pipeline(
    spec: PipelineSpec,
    *,
    sink: Sink,
    reader: ReaderConfig | None = None,
    settings: Settings | None = None,
    executor: str | Executor = "local",
    num_workers: int | None = None,
    work_root: Path | None = None,
    on_stage: StageCallback | None = None,
    keep_workdir: bool = False,
    message: str | None = None,
) -> RunResult:
    """Run `spec` over `reader` (or the spec's own reader) into `sink`; resumes an interrupted identical run."""
    t0 = time.perf_counter()
    reader = reader or spec.reader
    if reader is None:
        raise PipelineSpecError(spec.name, "no input: pass a ref or path, or add a `reader` to the pipeline")
    store = store_for(settings) if (reader.type == "version" and settings is not None) else None
    units, facts = plan_units(reader, store)
    run_id = run_id_for(spec, reader, facts, units, sink)
    root = (work_root or ((settings.home if settings else Path.home() / ".granary") / "work")) / run_id
    rd = RunDir(root)
    resuming = (root / "run.json").exists()
    if resuming:  # said at once (the CLI shows warnings on stderr), not only in the summary at the end
        log.warning("resuming the interrupted run %s of pipeline %s (work dir %s): finished tasks are kept",
                    run_id, spec.name, root)
    rd.root.mkdir(parents=True, exist_ok=True)
    rd.write_json(root / "run.json", {"spec": spec.to_dict(), "reader": dataclasses.asdict(reader),
                                      "input": facts, "units": len(units)})
    sink.prepare()
    ex = executor if isinstance(executor, Executor) else make_executor(executor, num_workers=num_workers)
    shard_size = settings.shard_size_bytes if settings else 64 * 1024 * 1024
    records: list[list[dict[str, Any]]] = []
    globals_: dict[str, dict[str, Any]] = {}
    resumed = 0
    try:
        for k, seg in enumerate(spec.segments()):
            tasks = [Task(spec, k, u, str(root), reader, sink, settings, shard_size) for u in units]
            seg_records, skipped = _run_segment(rd, ex, k, seg_name(spec, k), tasks, on_stage)
            resumed += skipped
            records.append(seg_records)
            if seg.boundary is not None:
                globals_[seg.boundary.display] = _global_phase(rd, k, seg.boundary.build(), units, on_stage)
    finally:
        if not isinstance(executor, Executor):
            ex.close()
    steps = _merge_stats(spec, records, globals_)
    side = _side_tables(rd, spec, len(units))
    final = sorted(records[-1], key=lambda r: r["unit"])
    entries = [e for r in final for e in r["entries"]]
    rows_in = sum(r["rows_in"] for r in records[0])
    quarantined = sum(r.get("quarantined", 0) for r in records[0])
    lineage = {"command": "granary curate", "pipeline": spec.to_dict(), "granary_version": granary.__version__,
               "input": facts, "run_id": run_id, "executor": ex.name, "workers": ex.num_workers,
               "steps": {k: v.to_dict() for k, v in steps.items()}, "global_phases": globals_}
    output = sink.finish(entries, side, message=message or f"curated with pipeline {spec.name}",
                         lineage=lineage, metadata={"curated_from": facts.get("input"), "pipeline": spec.name})
    result = RunResult(run_id=run_id, output=output, steps=steps, globals=globals_, rows_in=rows_in,
                       rows_out=sum(r["rows_out"] for r in final), rejected=sum(
                           t.num_rows for n, t in side.items() if n == "rejected"),
                       quarantined=quarantined, seconds=time.perf_counter() - t0, resumed_tasks=resumed,
                       resumed=resuming,
                       workdir=str(root), lineage=lineage)
    if not keep_workdir:
        shutil.rmtree(root, ignore_errors=True)
    return result


def seg_name(spec: PipelineSpec, k: int) -> str:
    """A progress label for segment k."""
    seg = spec.segments()[k]
    names = [c.display for c in seg.local] + ([f"{seg.boundary.display} (keys)"] if seg.boundary else [])
    if k > 0:
        prev = spec.segments()[k - 1].boundary
        names.insert(0, f"{prev.display if prev else ''} (apply)")
    return ", ".join(names) or "copy"


def _run_segment(rd: RunDir, ex: Executor, k: int, name: str, tasks: list[Task],
                 on_stage: StageCallback | None) -> tuple[list[dict[str, Any]], int]:
    done: list[dict[str, Any]] = []
    pending: list[Task] = []
    for t in tasks:
        rec = rd.read_json(rd.done(k, t.unit.index))
        (done if rec is not None else pending).append(rec if rec is not None else t)  # type: ignore[arg-type]
    skipped = len(done)
    advance = on_stage(name, len(tasks)) if on_stage else None
    if advance and skipped:
        advance(skipped)
    log.info("segment %d (%s): %d tasks, %d already done", k, name, len(tasks), skipped)

    def got(rec: dict[str, Any]) -> None:
        done.append(rec)
        if advance:
            advance(1)

    ex.map(run_task, pending, got)
    return sorted(done, key=lambda r: r["unit"]), skipped


def _global_phase(rd: RunDir, k: int, step: Any, units: list[Unit],
                  on_stage: StageCallback | None) -> dict[str, Any]:
    assert isinstance(step, GlobalStep)
    gdir = rd.global_dir(k)
    rec = rd.read_json(rd.decided(k))
    advance = on_stage(f"{step.name} (whole dataset)", 1) if on_stage else None
    if rec is None:
        t0 = time.perf_counter()
        step.decide([rd.collect(k, u.index) for u in units], gdir)
        rec = {"seconds": time.perf_counter() - t0, "summary": step.summary(gdir)}
        rd.write_json(rd.decided(k), rec)
    if advance:
        advance(1)
    return dict(rec["summary"], seconds=rec["seconds"])


def _merge_stats(spec: PipelineSpec, records: list[list[dict[str, Any]]],
                 globals_: dict[str, dict[str, Any]]) -> dict[str, StepStats]:
    out = {c.display: StepStats() for c in spec.steps}
    for seg in records:
        for r in seg:
            for name, d in r["stats"].items():
                out.setdefault(name, StepStats()).add(StepStats.from_dict(d))
    for name, g in globals_.items():
        out[name].seconds += float(g.get("seconds", 0.0))
    return out


def _side_tables(rd: RunDir, spec: PipelineSpec, n_units: int) -> dict[str, pa.Table]:
    side: dict[str, pa.Table] = {}
    rejected = [pq.read_table(p) for k in range(len(spec.segments())) for u in range(n_units)
                if (p := rd.rejected(k, u)).exists()]
    side["rejected"] = pa.concat_tables(rejected, promote_options="permissive") if rejected else empty_rejected()
    quarantine = [pq.read_table(p) for u in range(n_units) if (p := rd.quarantine(u)).exists()]
    if quarantine:
        side["quarantine"] = pa.concat_tables(quarantine, promote_options="permissive")
    for k, seg in enumerate(spec.segments()):
        if seg.boundary is not None:
            step = seg.boundary.build()
            extra = getattr(step, "side_tables", None)
            if extra is not None:
                side.update(extra(rd.global_dir(k)))
    return side
