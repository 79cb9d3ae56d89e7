"""Sharded tabular runs: the pipeline over a version's shards on local processes or Ray, resumable.

Each step that fits statistics does so in rounds: every shard computes partial statistics of its input
to that step (after the earlier steps, applied with their merged statistics), the driver merges them
exactly, in shard order, into the step's fitted values; ``dedup`` merges every shard's best row per key
into the rows each shard keeps. A last round applies the whole pipeline to each shard and writes its
output shard to the store; the driver commits them as one version. Every round's records are kept in
the run's work directory, so a rerun of an interrupted run does not redo finished shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from granary.curate.executors import Executor, make_executor
from granary.curate.tabular import fit as F
from granary.curate.tabular import partial as P
from granary.curate.tabular.context import QUARANTINE_SCHEMA, connect, quote
from granary.curate.tabular.pipeline import TabularPipeline, TabularResult
from granary.curate.tabular.runner import TabularRun
from granary.curate.tabular.shardrun import UnitTask, _dedup_order, keep_path, run_unit

if TYPE_CHECKING:
    from granary.store import Store

log = logging.getLogger(__name__)


class _Run:
    """One sharded run's state: its tasks' common fields, its work directory and the resume records."""

    def __init__(self, store: Store, pipeline: TabularPipeline, version: str, units: int, sources: dict[str, str],
                 output: str, root: Path, purpose: str | None) -> None:
        self.base: dict[str, Any] = {"settings": store.settings, "pipeline": pipeline, "version": version,
                                     "root": str(root), "sources": sources, "output": output, "purpose": purpose}
        self.units, self.root = units, root
        self.fitted: dict[int, dict[str, Any]] = {}
        self.resumed = 0

    def round(self, ex: Executor, name: str, **task: Any) -> list[dict[str, Any]]:
        """Run one round over every shard (skipping shards a previous run finished); records in shard order."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        records: dict[int, dict[str, Any]] = {}
        for u in range(self.units):
            path = folder / f"u{u:06d}.pkl"
            if path.exists():
                records[u] = pickle.loads(path.read_bytes())
                self.resumed += 1
        todo = [UnitTask(unit=u, fitted=dict(self.fitted), **self.base, **task)
                for u in range(self.units) if u not in records]

        def done(rec: dict[str, Any]) -> None:
            _atomic(folder / f"u{rec['unit']:06d}.pkl", pickle.dumps(rec))
            records[rec["unit"]] = rec

        ex.map(run_unit, todo, done)
        return [records[u] for u in range(self.units)]


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def curate_table_sharded(store: Store, pipeline: TabularPipeline, source: str, output: str, *,
                         executor: str | Executor = "local", num_workers: int | None = None,
                         branch: str | None = None, message: str | None = None, purpose: str | None = None,
                         keep_workdir: bool = False) -> TabularRun:
    """Run ``pipeline`` over version ``source`` shard by shard into a new version of table ``output``.

    The result equals :func:`curate_table`'s up to the rounding of merged means and deviations (quantiles,
    counts, categories and kept rows are exact); it does not depend on the executor or the number of workers.
    Reads in the workers go through the store (authorised, audited); the output inherits its sources'
    restrictions through its lineage, as a single run's does.
    """
    t0 = time.perf_counter()
    F.check_shardable(pipeline.steps, pipeline.name)
    version = store.resolve(source)
    manifest = store.open_version(version, purpose=purpose)
    resolved = {name: store.resolve(ref) for name, ref in pipeline.sources.items()}
    sources = {name: f"{v.dataset}@{v.id}" for name, v in resolved.items()}
    store.create_dataset(output, kind="table", exist_ok=True, description=f"curated from {source} by {pipeline.name}")
    ident = json.dumps({"pipeline": pipeline.to_dict(), "input": version.id, "sources": sources, "output": output,
                        "branch": branch}, sort_keys=True, default=str)
    root = store.settings.home / "work" / f"tabular-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
    if (root / "run.json").exists():
        log.warning("resuming the interrupted tabular run in %s: finished shards are kept", root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "run.json").write_text(ident)
    run = _Run(store, pipeline, f"{version.dataset}@{version.id}", len(manifest.shards), sources, output, root, purpose)
    ex = executor if isinstance(executor, Executor) else make_executor(executor, num_workers=num_workers)
    try:
        for i, step in enumerate(pipeline.steps):
            if F.needs_fit(step):
                _fit_step(run, ex, i, step)
        final = run.round(ex, "apply", kind="apply", step=len(pipeline.steps)) if run.units else []
    finally:
        if not isinstance(executor, Executor):
            ex.close()
    result = _result(pipeline, final, run.fitted, time.perf_counter() - t0)
    ids = {"input": version.id, **{name: v.id for name, v in resolved.items()}}
    lineage = {"inputs": sorted(set(ids.values())),
               "tabular": {"pipeline": pipeline.to_dict(), "inputs": ids,
                           "fitted": result.fitted, "steps": result.report,
                           "sharded": {"shards": run.units, "executor": ex.name, "workers": ex.num_workers}}}
    from granary.store import ShardEntry

    with store.transaction(output, branch=branch, mode="overwrite") as txn:
        txn.add_shards([ShardEntry(**r["entry"]) for r in final if r["entry"]])
        if result.quarantine.num_rows:
            txn.write_side_table("quarantine", result.quarantine)
        committed = txn.commit(message=message or f"curate {source} with {pipeline.name} (sharded)", lineage=lineage,
                               metadata={"quality": {"tabular": result.profile}}, allow_empty=True)
    if not keep_workdir:
        shutil.rmtree(root, ignore_errors=True)
    log.info("curated %s into %s over %d shards (%d shard tasks resumed)", source, committed.ref, run.units,
             run.resumed)
    return TabularRun(version=committed, result=result, resumed_tasks=run.resumed)


def _fit_step(run: _Run, ex: Executor, i: int, step: Any) -> None:
    """Fit step ``i`` over every shard, in as many rounds as its statistics need."""
    if not run.units:
        run.fitted[i] = {}
        return
    if step.name == "dedup":
        req = {"dedup": {"keys": list(step.keys), "order_by": step.order_by, "keep": step.keep}}
        parts = run.round(ex, f"fit-{i:03d}-0", kind="fit", step=i, request=req)
        _dedup_merge(run, i, req["dedup"], [p["partial"]["dedup"] for p in parts])
        return
    gen = F.fit(step)
    request = next(gen)
    r = 0
    while True:
        parts = run.round(ex, f"fit-{i:03d}-{r}", kind="fit", step=i, request=request)
        try:
            request = gen.send(F.merge(request, [p["partial"] for p in parts]))
        except StopIteration as stop:
            run.fitted[i] = stop.value
            return
        r += 1


def _dedup_merge(run: _Run, i: int, req: dict[str, Any], parts: list[pa.Table]) -> None:
    """Choose each key's row among the shards' best rows and write the positions every shard keeps."""
    tagged = [t.append_column("_u", pa.array(np.full(t.num_rows, u, dtype=np.int64))) for u, t in enumerate(parts)]
    con = connect()
    try:
        con.register("parts", pa.concat_tables(tagged, promote_options="default"))
        keys = ", ".join(quote(k) for k in req["keys"])
        order = _dedup_order(req, column="_o", tail="_u, _p")
        won = con.execute(f"SELECT _u, _p FROM parts QUALIFY row_number() OVER (PARTITION BY {keys} "
                          f"ORDER BY {order}) = 1 ORDER BY _u, _p").fetchnumpy()
    finally:
        con.close()
    cuts = np.searchsorted(won["_u"], np.arange(run.units + 1))
    for u in range(run.units):
        path = keep_path(run.root, i, u)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.asarray(won["_p"][cuts[u]:cuts[u + 1]], dtype=np.int64))


def _sum_reports(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        for k, v in p.items():
            if isinstance(v, dict):
                out[k] = _sum_reports([out.get(k, {}), v])
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and k in out:
                out[k] += v
            else:
                out.setdefault(k, v)
    return out


def _result(pipeline: TabularPipeline, final: list[dict[str, Any]], fitted: dict[int, Any],
            seconds: float) -> TabularResult:
    report = _sum_reports([r["report"] for r in final])
    labels = [s.display for s in pipeline.steps]
    quarantine = [q for r in final if r["quarantine"] is not None for q in [r["quarantine"]]]
    ordered = QUARANTINE_SCHEMA.empty_table()
    if quarantine:  # step by step, shard by shard (as a single run lists them)
        allq = pa.concat_tables(quarantine)
        steps = allq.column("step").to_pylist()
        order = sorted(range(allq.num_rows), key=lambda j: labels.index(steps[j]) if steps[j] in labels else 0)
        ordered = allq.take(pa.array(order, type=pa.int64()))
    fits = {pipeline.steps[i].display: v for i, v in fitted.items() if pipeline.steps[i].name != "dedup"}
    schema = next((r["schema"] for r in final if r["rows"]), final[0]["schema"] if final else pa.schema([]))
    return TabularResult(table=schema.empty_table(), quarantine=ordered, report=report, fitted=fits,
                         profile=merge_profiles([r["profile"] for r in final]), seconds=seconds,
                         rows=sum(r["rows"] for r in final))


def merge_profiles(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The tabular quality section from the shards' partial profiles (as :func:`profile` gives for one table)."""
    rows = sum(p["rows"] for p in parts)
    cols: dict[str, Any] = {}
    for name in (parts[0]["columns"] if parts else {}):
        got = [p["columns"][name] for p in parts if name in p["columns"]]
        present = sum(g["present"] for g in got)
        entry: dict[str, Any] = {"type": got[0]["type"], "completeness": present / rows if rows else 1.0}
        if "moments" in got[0]:
            m = P.merge_moments([g["moments"] for g in got])
            entry.update(min=m.min, max=m.max, mean=m.mean if m.n else None, std=m.std)
        elif all(g["counts"] is not None for g in got):
            counts = P.merge_counts([g["counts"] for g in got])
            entry["distinct"] = len(counts)
            entry["top"] = [[v, counts[v]] for v in P.most_frequent(counts, 5)]
        else:
            entry["distinct"] = None  # more than PROFILE_DISTINCT_LIMIT values in a shard: not counted
        cols[name] = entry
    return {"rows": rows, "columns": cols}
