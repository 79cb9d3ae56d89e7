"""`granary ingest-stream`, `stream-offsets` and `ingest-table`: live and tabular data into table versions."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from granary.cli.output import console, err_console, print_json, table


def ingest_stream_cmd(
    source: Annotated[str, typer.Argument(help="redis://127.0.0.1:6379/0?stream=S, nats://127.0.0.1:4222?stream=S, "
                                               "amqp://guest:guest@127.0.0.1:5672/%2F?queue=Q or "
                                               "kafka://HOST:9092?topic=T")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Table dataset to commit to (created if missing).")],
    every: Annotated[str, typer.Option(help="Commit at least this often while messages arrive (500ms, 2m).")] = "5s",
    max_records: Annotated[int | None, typer.Option(help="Stop after committing this many messages.")] = None,
    idle_stop: Annotated[str | None, typer.Option(help="Stop after this long without a message (e.g. 10s).")] = None,
    batch_records: Annotated[int, typer.Option(help="Commit as soon as this many messages are buffered.")] = 200_000,
    fmt: Annotated[str, typer.Option("--format", help="Message bodies: json (one object each) or raw.")] = "json",
    schema: Annotated[str | None,
                      typer.Option(help="Column types of json bodies: n:int64,name:string,ts:timestamp")] = None,
    branch: Annotated[str | None, typer.Option(help="Branch to commit to (default: the dataset's default).")] = None,
    pipeline: Annotated[Path | None, typer.Option("--pipeline", "-p",
                                                  help="A kind: tabular pipeline run on each micro-batch.")] = None,
    dedup_keys: Annotated[str | None, typer.Option(help="Key columns (comma separated): a record whose key the "
                                                        "branch already holds is not committed again.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Consume a message stream into versions: one commit per micro-batch, offsets committed with the data."""
    from granary.live import IngestConfig, StreamIngester
    from granary.live.registry import open_source, parse_duration, parse_schema
    from granary.store import open_store

    if fmt not in ("json", "raw"):
        raise ValueError(f"--format must be json or raw, got {fmt!r}")
    config = IngestConfig(dataset=dataset, branch=branch, every_s=parse_duration(every), max_records=max_records,
                          idle_stop_s=parse_duration(idle_stop) if idle_stop else None, batch_records=batch_records,
                          fmt=fmt, schema=parse_schema(schema) if schema else None,  # type: ignore[arg-type]
                          pipeline=_tabular(pipeline) if pipeline else None,
                          dedup_keys=tuple(k.strip() for k in dedup_keys.split(",") if k.strip()) if dedup_keys else ())
    store = open_store()
    src = open_source(source)
    status = None if json_out else console.status(f"ingesting {src.url} into {dataset}")

    def on_commit(stats: Any) -> None:
        if status is not None:
            status.update(f"{src.url} -> {dataset}: {stats.records:,} records in {stats.commits} commits, "
                          f"{stats.records_per_s:,.0f}/s, position {stats.position}")

    ingester = StreamIngester(store, src, config, on_commit=on_commit)
    previous = signal.signal(signal.SIGTERM, lambda *_: ingester.stop())
    try:
        if status is not None:
            with status:
                stats = ingester.run()
        else:
            stats = ingester.run()
    except KeyboardInterrupt:
        err_console.print("interrupted: the last committed micro-batch is kept; run again to resume")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = {"source": src.url, "dataset": dataset, "records": stats.records, "quarantined": stats.quarantined,
           "duplicates": stats.duplicates,
           "commits": stats.commits, "seconds": round(stats.seconds, 3), "records_per_s": round(stats.records_per_s),
           "position": stats.position, "lag": stats.lag, "head": stats.versions[-1] if stats.versions else None}
    if json_out:
        print_json(out)
        return
    console.print(table(f"ingest-stream {dataset}", ["what", "value"],
                        [(k, "" if v is None else (f"{v:,}" if isinstance(v, int) else str(v)))
                         for k, v in out.items()]))


def _tabular(path: Path) -> Any:
    from granary.curate.tabular import TabularPipeline

    return TabularPipeline.from_yaml(path)


def offsets_cmd(
    dataset: Annotated[str | None, typer.Argument(help="Only this dataset's offsets.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Committed consumer offsets: where each source stands in each dataset branch."""
    from granary.live import list_offsets
    from granary.store import open_store

    rows = list_offsets(open_store().catalog, dataset)
    if json_out:
        print_json([o.__dict__ for o in rows])
        return
    console.print(table("Stream offsets", ["dataset", "branch", "source", "position", "records", "version"],
                        [(o.dataset, o.branch, o.source, o.position, f"{o.records:,}", (o.version_id or "")[:12])
                         for o in rows]))


def register(app: typer.Typer) -> None:
    app.command("ingest-stream")(ingest_stream_cmd)
    app.command("stream-offsets")(offsets_cmd)
    app.command("ingest-table")(ingest_table_cmd)


def ingest_table_cmd(
    paths: Annotated[list[Path], typer.Argument(help="CSV (with a header row) or Parquet files.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Table dataset to commit to (created if missing).")],
    overwrite: Annotated[bool, typer.Option(help="Replace the branch's rows instead of appending.")] = False,
    branch: Annotated[str | None, typer.Option(help="Branch to commit to (default: the dataset's default).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Commit CSV/Parquet files as a table version (any columns; malformed CSV rows go to its quarantine)."""
    from granary.store import open_store
    from granary.store.ingest.table import ingest_table

    for p in paths:
        if not p.is_file():
            raise ValueError(f"no such file: {p}")
    version, bad = ingest_table(open_store(), list(paths), dataset, branch=branch,
                                mode="overwrite" if overwrite else "append")
    out = {"dataset": dataset, "version": version.id, "rows": version.num_rows, "quarantined": bad}
    if json_out:
        print_json(out)
        return
    console.print(f"committed {version.ref}: {version.num_rows:,} rows, {bad:,} quarantined", highlight=False)
