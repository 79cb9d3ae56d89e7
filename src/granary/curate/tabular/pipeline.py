"""Tabular pipelines (Python or YAML) and running one over Arrow tables with DuckDB."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from granary.curate.errors import PipelineSpecError
from granary.curate.tabular.base import TabularStep, step_from_dict
from granary.curate.tabular.context import QUARANTINE_SCHEMA, TabularContext, connect
from granary.curate.tabular.profile import profile


def _load_steps() -> None:
    import granary.curate.tabular.clean
    import granary.curate.tabular.combine
    import granary.curate.tabular.learned
    import granary.curate.tabular.validate  # noqa: F401


@dataclass(kw_only=True, frozen=True)
class TabularPipeline:
    """An ordered list of tabular steps.

    Attributes:
        name: recorded in lineage.
        steps: the steps, in order.
        sources: other inputs the steps name (joins, unions, reference rules): view name -> dataset ref.
        profile_keys: key columns whose duplicates the quality report counts.
        freshness_column: a timestamp column whose age the quality report gives.
        threads: DuckDB threads (default: all cores).
    """

    name: str = "tabular"
    steps: tuple[TabularStep, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)
    profile_keys: tuple[str, ...] = ()
    freshness_column: str | None = None
    threads: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.steps:
            raise PipelineSpecError(self.name, "a pipeline needs at least one step")
        labels = [s.display for s in self.steps]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise PipelineSpecError(self.name, f"step names repeat: {dup}",
                                    hint="give repeated steps distinct `label`s")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "pipeline") -> TabularPipeline:
        """Build from a mapping shaped like the YAML file (``kind: tabular``)."""
        _load_steps()
        if not isinstance(data, dict):
            raise PipelineSpecError(where, f"expected a mapping, got {type(data).__name__}")
        known = {"kind", "name", "steps", "sources", "profile_keys", "freshness_column", "threads", "description"}
        unknown = set(data) - known
        if unknown:
            raise PipelineSpecError(where, f"unknown keys {sorted(unknown)}", hint=f"known keys: {sorted(known)}")
        if data.get("kind", "tabular") != "tabular":
            raise PipelineSpecError(f"{where}.kind", f"expected 'tabular', got {data.get('kind')!r}")
        raw = data.get("steps") or []
        if not isinstance(raw, list):
            raise PipelineSpecError(f"{where}.steps", "must be a list of steps")
        steps = tuple(step_from_dict(s, where=f"{where}.steps[{i}]") for i, s in enumerate(raw))
        return cls(name=data.get("name", "tabular"), steps=steps, sources=dict(data.get("sources") or {}),
                   profile_keys=tuple(data.get("profile_keys") or ()), freshness_column=data.get("freshness_column"),
                   threads=data.get("threads"), description=data.get("description", ""))

    @classmethod
    def from_yaml(cls, path: str | Path) -> TabularPipeline:
        """Load a YAML pipeline file."""
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise PipelineSpecError(str(p), f"not valid YAML: {exc}") from exc
        return cls.from_dict(data, where=str(p))

    def to_dict(self) -> dict[str, Any]:
        """A YAML-ready mapping (``from_dict`` turns it back into an equal pipeline)."""
        out: dict[str, Any] = {"kind": "tabular", "name": self.name, "steps": [s.to_dict() for s in self.steps]}
        if self.sources:
            out["sources"] = dict(self.sources)
        if self.profile_keys:
            out["profile_keys"] = list(self.profile_keys)
        if self.freshness_column:
            out["freshness_column"] = self.freshness_column
        return out


@dataclass
class TabularResult:
    """The output of a run: the rows, the quarantined rows, per-step facts, fitted statistics, quality profile.

    A sharded run leaves its rows in the store (its output shards): its ``table`` is empty, with the
    output's schema, and ``rows`` counts them.
    """

    table: pa.Table
    quarantine: pa.Table
    report: dict[str, dict[str, Any]]
    fitted: dict[str, Any]
    profile: dict[str, Any]
    seconds: float
    rows: int = -1

    def __post_init__(self) -> None:
        if self.rows < 0:
            self.rows = self.table.num_rows


def run_tabular(pipeline: TabularPipeline, data: pa.Table | pa.RecordBatchReader, *,
                sources: dict[str, pa.Table] | None = None, with_profile: bool = True) -> TabularResult:
    """Run ``pipeline`` over ``data`` (and the named ``sources``) in an in-memory DuckDB.

    The input is scanned in place (Arrow, no copy); steps compose into lazy views and DuckDB runs them
    as pipelined queries, materialising only where a step needs statistics or splits off quarantined rows.
    """
    t0 = time.perf_counter()
    con = connect(pipeline.threads)
    try:
        ctx = TabularContext(con)
        rel = ctx.register(data, "input")
        for name, table in (sources or {}).items():
            ctx.register(table, name)
        missing = sorted(set(pipeline.sources) - set(sources or {}))
        if missing:
            raise PipelineSpecError(pipeline.name, f"sources {missing} were not given")
        # the store is the only way in: steps can name registered tables, never files or URLs
        con.execute("SET enable_external_access = false")
        for step in pipeline.steps:
            rel = step.apply(ctx, rel)
        table = ctx.arrow(f"SELECT * FROM {rel}")
        ctx.settle(rel, table.num_rows)
        quarantine = pa.concat_tables(ctx.quarantine) if ctx.quarantine else QUARANTINE_SCHEMA.empty_table()
        prof = profile(ctx, table, keys=pipeline.profile_keys, freshness=pipeline.freshness_column) \
            if with_profile else {}
    finally:
        con.close()
    return TabularResult(table=table, quarantine=quarantine, report=ctx.report, fitted=ctx.fitted, profile=prof,
                         seconds=time.perf_counter() - t0)
