"""The per-shard worker of a sharded tabular run: summarise one shard for a step's fit, or apply the pipeline.

A task reads its shard of the input version through the store (authorised and audited in the worker),
replays the steps before the one being fitted with their merged statistics, and either returns partial
statistics (see :mod:`granary.curate.tabular.partial`) or, for the last round, writes its output shard to
the store and returns the entry, its quarantined rows, its step reports and a partial profile.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from granary.curate.tabular import partial as P
from granary.curate.tabular.clean import numeric_columns
from granary.curate.tabular.context import QUARANTINE_SCHEMA, TabularContext, connect, quote

if TYPE_CHECKING:
    from granary.config import Settings
    from granary.curate.tabular.pipeline import TabularPipeline

PROFILE_DISTINCT_LIMIT = 10_000
_DB: list[Any] = []  # this process's DuckDB instance (opening one costs about 0.1 s; each task takes a cursor)


def _cursor() -> Any:
    """A fresh connection (its own temporary views) to this process's single-threaded, sealed DuckDB."""
    if not _DB:
        con = connect(1)  # one thread: the parallelism is across shards
        con.execute("SET enable_external_access = false")  # the store is the only way in
        _DB.append(con)
    return _DB[0].cursor()


@dataclass(frozen=True)
class UnitTask:
    """One shard's work in one round (picklable: it travels to worker processes and Ray tasks)."""

    settings: Settings
    pipeline: TabularPipeline
    version: str
    unit: int
    root: str
    kind: Literal["fit", "apply"]
    step: int
    request: dict[str, Any] = field(default_factory=dict)
    fitted: dict[int, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    output: str = ""
    purpose: str | None = None


def keep_path(root: str | Path, step: int, unit: int) -> Path:
    """The rows (positions) of ``unit`` that dedup step ``step`` keeps."""
    return Path(root) / f"dedup-{step:03d}" / f"keep-{unit:06d}.npy"


def _store(task: UnitTask) -> Any:
    from granary.curate.writers.sink import store_for

    store = store_for(task.settings)
    return store.bind(purpose=task.purpose) if task.purpose else store


def _read_unit(store: Any, task: UnitTask) -> pa.Table:
    manifest = store.open_version(task.version, purpose=task.purpose)  # the read decision, audited
    return store.read_shard(manifest.shards[task.unit])


def run_unit(task: UnitTask) -> dict[str, Any]:
    """Run one task; returns a picklable record for the driver."""
    store = _store(task)
    con = _cursor()
    try:
        ctx = TabularContext(con)
        for name, vid in task.sources.items():
            ctx.register(store.read_table(vid, purpose=task.purpose), name)
        start, table = _load_state(store, ctx, task)
        rel = ctx.register(table, "input")
        for i in range(start, task.step):
            rel = _apply(ctx, rel, i, task.pipeline.steps[i], task)
        if task.kind == "fit":
            if task.step > start:  # later rounds start here instead of replaying these steps
                rel = ctx.register(_save_state(ctx, rel, task))
            return {"unit": task.unit, "partial": _partial(ctx, rel, task)}
        return _finish(store, ctx, rel, task)
    finally:
        con.close()


def _state(task: UnitTask, step: int, what: str) -> Path:
    return Path(task.root) / "state" / f"u{task.unit:06d}-s{step:03d}.{what}"


def _load_state(store: Any, ctx: TabularContext, task: UnitTask) -> tuple[int, pa.Table]:
    """The latest saved input of a step up to ``task.step`` (with the reports and quarantine so far), or
    the shard itself read through the store."""
    for k in range(task.step, 0, -1):
        path = _state(task, k, "arrow")
        if path.exists():
            ctx.report = json.loads(_state(task, k, "json").read_text())
            quarantine = pa.ipc.open_file(pa.memory_map(str(_state(task, k, "q.arrow")))).read_all()
            ctx.quarantine = [quarantine] if quarantine.num_rows else []
            return k, pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    return 0, _read_unit(store, task)


def _save_state(ctx: TabularContext, rel: str, task: UnitTask) -> pa.Table:
    """Keep this shard's input to step ``task.step`` (uncompressed Arrow, memory-mapped when read back)."""
    table = ctx.arrow(f"SELECT * FROM {rel}")
    quarantine = pa.concat_tables(ctx.quarantine) if ctx.quarantine else QUARANTINE_SCHEMA.empty_table()
    path = _state(task, task.step, "arrow")
    path.parent.mkdir(parents=True, exist_ok=True)
    for t, what in ((quarantine, "q.arrow"), (table, "arrow")):  # the table last: its presence marks the state
        tmp = _state(task, task.step, f"tmp.{what}")
        with pa.ipc.new_file(str(tmp), t.schema) as writer:
            writer.write_table(t)
        if what == "q.arrow":
            _state(task, task.step, "json").write_text(json.dumps(ctx.report, default=str))
        tmp.replace(_state(task, task.step, what))
    for old in path.parent.glob(f"u{task.unit:06d}-s*.*"):  # earlier states are no longer needed
        if not old.name.startswith(path.stem):
            old.unlink(missing_ok=True)
    return table


def _apply(ctx: TabularContext, rel: str, i: int, step: Any, task: UnitTask) -> str:
    """Step ``i`` with its merged statistics (dedup: the rows the merge chose)."""
    if step.name == "dedup":
        table = ctx.arrow(f"SELECT * FROM {rel}")
        keep = np.load(keep_path(task.root, i, task.unit))
        ctx.note(step.display, rows_in=table.num_rows, rows_out=len(keep))
        return ctx.register(table.take(pa.array(keep, type=pa.int64())))
    if i in task.fitted:
        step = dataclasses.replace(step, fitted=task.fitted[i])
    return str(step.apply(ctx, rel))


def _targets(ctx: TabularContext, rel: str, task: UnitTask) -> list[str]:
    step = task.pipeline.steps[task.step]
    wanted = list(getattr(step, "columns", ()) or ())
    return wanted or numeric_columns(ctx.columns(rel))


def _numbers(col: pa.ChunkedArray, center: float | None = None) -> np.ndarray:
    x = col.drop_null().cast(pa.float64()).to_numpy()
    return np.abs(x - center) if center is not None else x


def _partial(ctx: TabularContext, rel: str, task: UnitTask) -> dict[str, Any]:
    """The primitives the driver asked for, on this shard's input to the step being fitted."""
    req, out = task.request, {}  # type: dict[str, Any], dict[str, Any]
    if "dedup" in req:
        return {"dedup": _dedup_partial(ctx, rel, req["dedup"])}
    cols = _targets(ctx, rel, task)
    data = ctx.arrow(f"SELECT {', '.join(quote(c) for c in cols)} FROM {rel}")  # one scan for every column
    if "moments" in req:
        out["moments"] = {c: P.Moments.of(_numbers(data.column(c))) for c in cols}
    if "counts" in req:
        out["counts"] = {}
        for c in cols:
            vc = pc.value_counts(data.column(c).drop_null())
            out["counts"][c] = P.value_counts(vc.field("values").to_pylist(), vc.field("counts").to_pylist())
    if "sketch" in req:
        out["sketch"] = {c: P.Sketch.of(_numbers(data.column(c), req["sketch"].get(c))) for c in cols}
    if "window" in req:
        out["window"] = [P.window(_numbers(data.column(c), center), lo, hi) for c, center, lo, hi in req["window"]]
    return out


def _dedup_partial(ctx: TabularContext, rel: str, req: dict[str, Any]) -> pa.Table:
    """Per key, this shard's best row: its order value and position (ties: the first row)."""
    keys = ", ".join(quote(k) for k in req["keys"])
    table = ctx.arrow(f"SELECT {keys}{', ' + quote(req['order_by']) if req['order_by'] else ''} FROM {rel}")
    table = table.append_column("_p", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    name = ctx.register(table)
    order = _dedup_order(req)
    o = f"{quote(req['order_by'])} AS _o" if req["order_by"] else "NULL::BIGINT AS _o"
    return ctx.arrow(f"SELECT {keys}, {o}, _p FROM {name} QUALIFY row_number() OVER (PARTITION BY {keys} "
                     f"ORDER BY {order}) = 1")


def _dedup_order(req: dict[str, Any], column: str | None = None, tail: str = "_p") -> str:
    """The winner order of dedup: newest (or oldest) order value, missing ones last, then the first row."""
    if not req["order_by"]:
        return tail
    col = column or quote(req["order_by"])
    direction = "DESC" if req["keep"] == "latest" else "ASC"
    return f"{col} {direction} NULLS LAST, {tail}"


def _finish(store: Any, ctx: TabularContext, rel: str, task: UnitTask) -> dict[str, Any]:
    """Write this shard's output to the store; return its entry, quarantine, reports and profile partial."""
    table = ctx.arrow(f"SELECT * FROM {rel}")
    entry = store.write_shard(task.output, table).canonical() if table.num_rows else None
    quarantine = pa.concat_tables(ctx.quarantine) if ctx.quarantine else None
    return {"unit": task.unit, "entry": entry, "rows": table.num_rows, "quarantine": quarantine,
            "report": ctx.report, "profile": profile_partial(table), "schema": table.schema}


def profile_partial(table: pa.Table) -> dict[str, Any]:
    """Mergeable per-column facts: non-null counts, moments of numbers, value counts of small categories."""
    cols: dict[str, Any] = {}
    for f in table.schema:
        col = table.column(f.name)
        entry: dict[str, Any] = {"type": str(f.type), "present": len(col) - col.null_count}
        if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type):
            entry["moments"] = P.Moments.of(col.drop_null().cast(pa.float64()).to_numpy())
        else:
            vc = pc.value_counts(col.drop_null().cast(pa.string())) if entry["present"] else None
            entry["counts"] = {} if vc is None else None if len(vc) > PROFILE_DISTINCT_LIMIT else P.value_counts(
                vc.field("values").to_pylist(), vc.field("counts").to_pylist())
        cols[f.name] = entry
    return {"rows": table.num_rows, "columns": cols}
