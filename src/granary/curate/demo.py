"""The curation part of `granary demo`: curate the demo corpus into `demo-curated` and write its report."""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from granary.curate.api import curate
from granary.curate.spec import PipelineSpec

if TYPE_CHECKING:
    from rich.console import Console

    from granary.store import Store

log = logging.getLogger(__name__)
SOURCE = "demo"
OUTPUT = "demo-curated"


def demo_pipeline() -> PipelineSpec:
    """The pipeline shipped with the package (`granary/curate/pipelines/demo.yaml`)."""
    path = resources.files("granary.curate") / "pipelines" / "demo.yaml"
    with resources.as_file(path) as p:
        return PipelineSpec.from_yaml(Path(p))


def run(store: Store, console: Console) -> dict[str, Any]:
    """Curate `demo@main` into `demo-curated`; returns counts, the new ref and the HTML report path."""
    names = {d.name for d in store.datasets()}
    if SOURCE not in names:
        _make_corpus(store)
    t0 = time.perf_counter()
    result, rep = curate(store, f"{SOURCE}@main", demo_pipeline(), OUTPUT, executor="local", num_workers=1)
    drops = {f"{x['step']}:{x['reason']}": x["count"] for x in rep["drops"]}
    console.print(f"curated {SOURCE} -> {result.output['ref']}: kept {result.rows_out:,} of {result.rows_in:,} "
                  f"documents; report {rep['paths']['html']}", highlight=False)
    return {
        "version": result.output["ref"],
        "documents_in": result.rows_in,
        "documents_out": result.rows_out,
        "rejected": result.rejected,
        "exact_duplicates": result.steps["exact_dedup"].docs_in - result.steps["exact_dedup"].docs_out,
        "near_duplicates": result.steps["minhash_dedup"].docs_in - result.steps["minhash_dedup"].docs_out,
        "pii": rep["pii"]["counts"],
        "drops": drops,
        "report_html": rep["paths"]["html"],
        "report_json": rep["paths"]["json"],
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _make_corpus(store: Store) -> None:
    """Create the demo corpus when `granary demo`'s ingest step has not (standalone use)."""
    import pyarrow as pa

    from granary.demo.corpus import generate

    docs, _ = generate(3000)
    store.create_dataset(SOURCE, kind="documents", exist_ok=True)
    store.commit_table(SOURCE, pa.Table.from_pylist(docs), message="demo corpus (created by curate demo)")
