"""The one-call entry point: curate a ref or path into a new version of the store, then report on it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from granary.curate.readers import reader_for
from granary.curate.runner import RunResult, StageCallback, run_pipeline
from granary.curate.spec import PipelineSpec
from granary.curate.writers import StoreSink

if TYPE_CHECKING:
    from granary.store import Store

log = logging.getLogger(__name__)


def curate(
    store: Store,
    source: str | None,
    pipeline: PipelineSpec | str | Path,
    output: str,
    *,
    executor: str = "local",
    num_workers: int | None = None,
    branch: str = "main",
    on_stage: StageCallback | None = None,
    report_dir: Path | None = None,
    keep_workdir: bool = False,
    report: bool = True,
    allow_empty: bool = False,
) -> tuple[RunResult, dict[str, Any]]:
    """Run a pipeline from a dataset ref (or a file/directory path) into `output@branch`.

    Returns the run result and the quality report of the new version (empty when `report` is False); the
    report is also written as `report.json` and `report.html` under `report_dir` (default
    `<home>/reports/<output>-<version>`). An output identical to the branch head (a finished run repeated)
    returns the head instead of a new version, unless `allow_empty` is True.
    """
    from granary.curate.report import render_html, report_for_version

    spec = pipeline if isinstance(pipeline, PipelineSpec) else PipelineSpec.from_yaml(pipeline)
    reader = reader_for(source) if source else None
    result = run_pipeline(spec, sink=StoreSink(store.settings, output, branch, allow_empty), reader=reader,
                          settings=store.settings, executor=executor, num_workers=num_workers,
                          on_stage=on_stage, keep_workdir=keep_workdir,
                          message=f"curate {source or 'pipeline input'} with {spec.name}")
    if not report:
        return result, {}
    rep = report_for_version(store, f"{output}@{result.output['version']}")
    out_dir = report_dir or store.settings.home / "reports" / f"{output}-{result.output['version'][:12]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(rep, indent=1, default=str))
    (out_dir / "report.html").write_text(render_html(rep))
    rep["paths"] = {"json": str(out_dir / "report.json"), "html": str(out_dir / "report.html")}
    return result, rep
