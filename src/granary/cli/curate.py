"""`granary curate` and `granary report`: run a curation pipeline into a new version; report on a version."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from granary.cli.common import EncryptOpt, PurposeOpt, apply_encrypt, read_store
from granary.cli.output import console, fail, print_json, progress, table


def curate_cmd(
    ref: Annotated[str, typer.Argument(help="Input: a dataset ref (web@main) or a file/directory path; "
                                            "`granary curate steps` lists every step and its options.")],
    pipeline: Annotated[Path | None, typer.Option("--pipeline", "-p", help="Pipeline YAML file.")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Dataset to commit the result to.")] = None,
    executor: Annotated[str, typer.Option(help="Where tasks run: local (processes) or ray.")] = "local",
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per core; a tabular pipeline "
                                                     "runs shard by shard only when this or --executor ray is "
                                                     "given).")] = None,
    branch: Annotated[str, typer.Option(help="Branch of the output dataset.")] = "main",
    encrypt: EncryptOpt = False,
    purpose: PurposeOpt = None,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Commit a new version even when the output "
                                              "equals the current head (default: the head is kept).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Run a curation pipeline; an interrupted run resumes when the same command is run again."""
    from granary.curate import PipelineSpec, curate

    if ref == "steps" and pipeline is None:  # `granary curate steps` (a dataset named steps: give --pipeline)
        _list_steps(json_out)
        return
    if pipeline is None or output is None:
        fail("granary curate needs --pipeline FILE and --output DATASET (granary curate steps lists the steps a "
             "pipeline can use)")
    if executor not in ("local", "ray"):
        fail(f"--executor must be local or ray, got {executor!r}")
    if workers is not None and workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    if _is_tabular(pipeline):
        apply_encrypt(encrypt)
        _curate_table(ref, pipeline, output, branch, json_out, executor=executor, workers=workers, purpose=purpose)
        return
    spec = PipelineSpec.from_yaml(pipeline)
    apply_encrypt(encrypt)
    store = read_store(purpose)
    with progress(disable=json_out) as bar:
        result, rep = curate(store, ref, spec, output, executor=executor, num_workers=workers, branch=branch,
                             on_stage=_stages(bar), allow_empty=allow_empty)
    if os.environ.get("GRANARY_MONITOR_URL"):  # report the run to this node's monitor agent (docs/watch.md)
        from granary.monitor.push import push_curate_steps

        push_curate_steps(result.steps, job=os.environ.get("GRANARY_JOB_ID") or f"curate:{output}")
    if json_out:
        print_json(result.to_dict() | {"report": rep["paths"]})
        return
    rows = [(name, f"{s.docs_in:,}", f"{s.docs_out:,}", f"{s.bytes_in / 1e6:,.1f}", f"{s.bytes_out / 1e6:,.1f}",
             f"{s.seconds:.2f}") for name, s in result.steps.items()]
    console.print(table(f"Pipeline {spec.name}", ["step", "docs in", "docs out", "MB in", "MB out", "seconds"],
                        rows))
    console.print(f"committed {result.output['ref']}: {result.rows_out:,} of {result.rows_in:,} documents kept, "
                  f"{result.rejected:,} rejected (see the version's `rejected` table), "
                  f"{result.quarantined:,} quarantined, {result.seconds:.1f} s", highlight=False)
    if result.resumed:
        console.print(f"resumed the interrupted run {result.run_id}: {result.resumed_tasks} task(s) finished "
                      "before the interruption were kept, not run again", highlight=False)
    console.print(f"report: {rep['paths']['html']}", highlight=False)


def _is_tabular(path: Path) -> bool:
    """Whether a pipeline file declares ``kind: tabular`` (tabular steps over a table version)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False  # PipelineSpec.from_yaml reports it with the file and line
    return isinstance(data, dict) and data.get("kind") == "tabular"


def _curate_table(ref: str, pipeline: Path, output: str, branch: str, json_out: bool, *, executor: str,
                  workers: int | None, purpose: str | None) -> None:
    """One process (DuckDB on every core) by default; shard by shard with ``--workers N`` or ``--executor ray``."""
    from granary.curate.tabular import TabularPipeline, curate_table, curate_table_sharded

    spec = TabularPipeline.from_yaml(pipeline)
    store = read_store(purpose)
    sharded = executor == "ray" or workers is not None
    how = f" on {executor} ({workers or 'all'} workers)" if sharded else ""
    with console.status(f"running {spec.name} on {ref}{how}", spinner="dots") if not json_out else _nothing():
        if sharded:
            run = curate_table_sharded(store, spec, ref, output, executor=executor, num_workers=workers,
                                       branch=branch, purpose=purpose)
        else:
            run = curate_table(store, spec, ref, output, branch=branch, purpose=purpose)
    if json_out:
        print_json(run.summary())
        return
    rows = []
    for step in spec.steps:
        facts = run.result.report.get(step.display, {})
        rows.append((step.display, ", ".join(f"{k}={v}" for k, v in facts.items())[:100]))
    console.print(table(f"Tabular pipeline {spec.name}", ["step", "facts"], rows))
    if run.resumed_tasks:
        console.print(f"resumed an interrupted run: {run.resumed_tasks} finished shard task(s) kept", highlight=False)
    console.print(f"committed {run.version.ref}: {run.result.rows:,} rows, "
                  f"{run.result.quarantine.num_rows:,} quarantined (see the version's `quarantine` table), "
                  f"{run.result.seconds:.2f} s", highlight=False)


def _nothing() -> Any:
    from contextlib import nullcontext

    return nullcontext()


def _list_steps(json_out: bool) -> None:
    from granary.curate.spec import describe_steps

    steps = describe_steps()
    if json_out:
        print_json(steps)
        return
    rows = [(d["step"], d["kind"], d["summary"],
             "\n".join(f"{o['name']}: {o['type']} = {o['default']!r}" for o in d["options"] if o["name"] != "label"))
            for d in steps]
    console.print(table("Curation steps (use in a pipeline's `steps:`; every step also takes `label`)",
                        ["step", "kind", "what it does", "options (type = default)"], rows, no_wrap=["step"]))


def _stages(bar: Any) -> Callable[[str, int], Callable[[int], None]]:
    def on_stage(name: str, total: int) -> Callable[[int], None]:
        task = bar.add_task(name[:60], total=total)
        return lambda n: bar.advance(task, n)

    return on_stage


def report_cmd(
    ref: Annotated[str, typer.Argument(help="A dataset ref, e.g. web-clean@main.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML page here.")] = None,
    purpose: PurposeOpt = None,
) -> None:
    """Quality report of a version: completeness, duplicates, lengths, languages, drops, PII, sources, outliers."""
    from granary.curate.report import render_html, report_for_version

    rep = report_for_version(read_store(purpose), ref)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(rep))
    if json_out:
        print_json(rep)
        return
    d = rep["duplicates"]
    rows = [("documents", f"{rep['documents']:,}"), ("text", f"{rep['text_bytes'] / 1e6:,.1f} MB"),
            ("exact duplicate rate", f"{d['exact_rate']:.2%}"), ("near duplicate rate", f"{d['near_rate']:.2%}"),
            ("median chars", f"{rep['lengths']['chars'].get('p50', 0):,.0f}"),
            ("languages", ", ".join(f"{k} {v}" for k, v in list(rep["languages"]["counts"].items())[:5])),
            ("sources", ", ".join(f"{k} {v}" for k, v in list(rep["sources"].items())[:5]) or "-"),
            ("dropped", ", ".join(f"{x['reason']} {x['count']}" for x in rep["drops"][:6]) or "-"),
            ("PII", ", ".join(f"{k} {v}" for k, v in rep["pii"]["counts"].items()) or "-"),
            ("quarantined", str(rep["quarantine"]["count"]))]
    console.print(table(f"Report {rep['name']}", ["measure", "value"], rows))
    if html is not None:
        console.print(f"HTML report: {html}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the curate and report commands."""
    app.command("curate")(curate_cmd)
    app.command("report")(report_cmd)
