"""Curating table versions of the store: read through the store, run the pipeline, commit with lineage."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from granary.curate.tabular.pipeline import TabularPipeline, TabularResult, run_tabular

if TYPE_CHECKING:
    from granary.store import Store
    from granary.store.model import VersionInfo

log = logging.getLogger(__name__)


@dataclass
class TabularRun:
    """A committed tabular curation: the new version and what the run found."""

    version: VersionInfo
    result: TabularResult
    resumed_tasks: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts for the CLI."""
        return {"version": self.version.id, "rows": self.result.rows, "resumed_tasks": self.resumed_tasks,
                "quarantined": self.result.quarantine.num_rows, "seconds": round(self.result.seconds, 3),
                "steps": self.result.report, "fitted": self.result.fitted}


def curate_table(store: Store, pipeline: TabularPipeline, source: str, output: str, *, branch: str | None = None,
                 message: str | None = None, purpose: str | None = None) -> TabularRun:
    """Run ``pipeline`` on version ``source`` (and its named sources) into a new version of table ``output``.

    Every input is read through the store (authorised, audited, so the output inherits its inputs'
    restrictions); the output replaces the branch's rows (``overwrite``), with the quarantined rows in
    its ``quarantine`` side table, and the fitted statistics, per-step counts and quality profile in its
    lineage and metadata.
    """
    inputs = {"input": store.resolve(source)}
    inputs.update({name: store.resolve(ref) for name, ref in pipeline.sources.items()})
    data = store.read_table(inputs["input"], purpose=purpose)
    others = {name: store.read_table(v, purpose=purpose) for name, v in inputs.items() if name != "input"}
    result = run_tabular(pipeline, data, sources=others)
    store.create_dataset(output, kind="table", exist_ok=True, description=f"curated from {source} by {pipeline.name}")
    # top-level `inputs` (version ids): what the store reads to make the output inherit its sources' restrictions
    lineage = {"inputs": sorted({v.id for v in inputs.values()}),
               "tabular": {"pipeline": pipeline.to_dict(),
                           "inputs": {name: v.id for name, v in inputs.items()},
                           "fitted": result.fitted, "steps": result.report}}
    with store.transaction(output, branch=branch, mode="overwrite") as txn:
        if result.table.num_rows:
            txn.write(result.table)
        if result.quarantine.num_rows:
            txn.write_side_table("quarantine", result.quarantine)
        version = txn.commit(message=message or f"curate {source} with {pipeline.name}", lineage=lineage,
                             metadata={"quality": {"tabular": result.profile}}, allow_empty=True)
    log.info("curated %s into %s: %d rows, %d quarantined", source, version.ref, result.table.num_rows,
             result.quarantine.num_rows)
    return TabularRun(version=version, result=result)
