"""Store commands: init, ingest, ls, log, show, diff, branch, tag, rollback, verify, gc, export."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from granary.cli.common import EncryptOpt, PurposeOpt, apply_encrypt, read_store
from granary.cli.output import console, err_console, fail, print_json, progress, table

if TYPE_CHECKING:
    from granary.store import Store

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _store() -> Store:
    from granary.store import open_store

    return open_store()


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)


def init(json_out: JsonOpt = False) -> None:
    """Create the catalog and object store (GRANARY_HOME, default ~/.granary)."""
    store = _store()
    info = {"home": str(store.settings.home), "catalog": store.catalog.url.render_as_string(hide_password=True),
            "storage": store.settings.storage_url}
    if json_out:
        print_json(info)
        return
    console.print(table("Granary initialised", ["setting", "value"], info.items()))


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (JSONL[.gz|.zst], Parquet, CSV, .txt/.md).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Target dataset (created if missing).")],
    on_error: Annotated[str, typer.Option(help="fail: stop at the first bad record; quarantine: keep it aside.")] =
    "fail",
    branch: Annotated[str | None, typer.Option(help="Target branch (default: the dataset's default).")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the branch contents instead of appending.")] = False,
    license: Annotated[str | None, typer.Option(help="SPDX license id recorded in the version.")] = None,
    source: Annotated[str | None, typer.Option(help="Source description recorded in the version.")] = None,
    encrypt: EncryptOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Ingest raw files into a new version of a dataset."""
    from granary.store.ingest import ingest as run_ingest
    from granary.store.ingest.ingest import discover

    if on_error not in ("fail", "quarantine"):
        fail("--on-error must be 'fail' or 'quarantine'")
    apply_encrypt(encrypt)
    store = _store()
    files = discover(list(paths))
    total = sum(f.stat().st_size for f, _, _ in files)
    meta = {k: v for k, v in {"license": license, "source": source}.items() if v}
    with progress(disable=json_out) as bar:
        task = bar.add_task(f"ingest {dataset}", total=total)
        report = run_ingest(store, list(paths), dataset, on_error=on_error, branch=branch,  # type: ignore[arg-type]
                            mode="overwrite" if overwrite else "append", message=message, metadata=meta,
                            on_bytes=lambda n: bar.advance(task, n))
    if json_out:
        print_json(report.to_dict())
        return
    v = report.version
    assert v is not None
    rows = [
        ("version", f"{dataset}@{v.short_id}"),
        ("files", report.files),
        ("records", f"{report.records:,}"),
        ("quarantined", f"{report.quarantined:,}" + (f"  {report.reasons}" if report.quarantined else "")),
        ("input", _size(report.bytes_in)),
        ("stored", f"{_size(v.num_bytes)} in {v.num_shards} shard(s)"),
        ("throughput", f"{report.bytes_in / 1e6 / max(report.seconds, 1e-9):.1f} MB/s"),
    ]
    if report.ignored_fields:
        rows.append(("ignored fields", ", ".join(report.ignored_fields)))
    if report.skipped:
        rows.append(("skipped (unknown format)", f"{len(report.skipped)}: " + ", ".join(report.skipped[:5])
                     + (" ..." if len(report.skipped) > 5 else "")))
    console.print(table("Ingest", ["", ""], rows))
    from rich.markup import escape

    for problem in report.damaged:
        err_console.print(f"[red]damaged input:[/] {escape(problem)}")
    if report.quarantined:
        err_console.print(f"[yellow]{report.quarantined} bad record(s) kept in the quarantine table; "
                          f"see `granary show {dataset} --quarantine`[/]")


def delete(dataset: Annotated[str, typer.Argument(help="Dataset.")],
           where: Annotated[str, typer.Option("--where", "-w", help="Filter, e.g. \"len(text) < 50\".")],
           branch: Annotated[str | None, typer.Option(help="Branch (default: the dataset's default).")] = None,
           message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
           allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Commit a new version even when no "
                                                     "row matches (default: the head is kept).")] = False,
           json_out: JsonOpt = False) -> None:
    """Commit a new version without the rows matching a filter expression."""
    store = _store()
    with store.transaction(dataset, branch=branch) as txn:
        txn.delete_where(where)
        v = txn.commit(message=message or f"delete where {where}", allow_empty=allow_empty,
                       lineage={"command": "delete", "params": {"where": where}})
        deleted = txn.stats.extra.get("rows_deleted", 0)
        unchanged = bool(txn.stats.extra.get("unchanged"))
    if json_out:
        print_json({"version": v.id, "rows_deleted": deleted, "rows": v.num_rows, "unchanged": unchanged})
        return
    if unchanged:
        console.print(f"no row matched; {dataset}@{v.short_id} is unchanged (no new version)")
        return
    console.print(f"deleted {deleted:,} row(s); {dataset}@{v.short_id} has {v.num_rows:,} rows")


def ls(purpose: PurposeOpt = None, json_out: JsonOpt = False) -> None:
    """List the datasets you may see, with their default branch head."""
    store = read_store(purpose)
    rows: list[dict[str, Any]] = []
    for ds in store.datasets():
        head = next((r.version_id for r in store.refs(ds.name, "branch") if r.name == ds.default_branch), None)
        v = store.resolve(f"{ds.name}@{head}") if head else None
        rows.append({"name": ds.name, "kind": ds.kind, "branch": ds.default_branch,
                     "head": head, "rows": v.num_rows if v else 0, "bytes": v.num_bytes if v else 0,
                     "tokens": v.num_tokens if v else None, "updated": _when(v.created_at) if v else ""})
    if json_out:
        print_json(rows)
        return
    console.print(table("Datasets", ["name", "kind", "head", "rows", "size", "tokens", "updated"],
                        [(r["name"], r["kind"], f"{r['branch']}@{(r['head'] or '')[:8]}", f"{r['rows']:,}",
                          _size(r["bytes"]), f"{r['tokens']:,}" if r["tokens"] else "", r["updated"][5:16])
                         for r in rows], no_wrap=("name", "kind", "head", "rows", "size", "tokens")))


def log(ref: Annotated[str, typer.Argument(help="NAME[@BRANCH|TAG|VERSION]")],
        limit: Annotated[int, typer.Option(help="At most this many versions.")] = 20,
        purpose: PurposeOpt = None, json_out: JsonOpt = False) -> None:
    """Show a version and its ancestors, newest first."""
    versions = read_store(purpose).log(ref, limit=limit)
    if json_out:
        print_json([v.to_dict() for v in versions])
        return
    console.print(table(f"Log of {ref}", ["version", "created", "author", "rows", "shards", "message"],
                        [(v.short_id, _when(v.created_at), v.author, f"{v.num_rows:,}", v.num_shards, v.message)
                         for v in versions]))


def show(ref: Annotated[str, typer.Argument(help="NAME[@BRANCH|TAG|VERSION]")],
         shards: Annotated[bool, typer.Option(help="List every shard.")] = False,
         quarantine: Annotated[bool, typer.Option(help="Print the quarantined records.")] = False,
         purpose: PurposeOpt = None, json_out: JsonOpt = False) -> None:
    """Describe one version: counts, schema, lineage, metadata, side tables and shards."""
    store = read_store(purpose)
    v = store.resolve(ref)
    m = store.manifest(v)
    info = v.to_dict() | {"schema": m.body.get("schema", {}) and m.body["schema"]["fields"],
                          "lineage": m.lineage, "metadata": m.metadata,
                          "tables": {k: sum(e.rows for e in t) for k, t in m.tables.items()},
                          "refs": [f"{r.kind}:{r.name}" for r in store.refs(v.dataset) if r.version_id == v.id]}
    if shards or json_out:
        info["shards"] = [e.canonical() for e in m.shards]
    if quarantine:
        qt = store.read_side_table(v, "quarantine")
        info["quarantine"] = [] if qt is None else [
            {"source": r["source"], "line": r["line"], "reason": r["reason"],
             "raw": (r["raw"] or b"")[:200].decode("utf-8", "replace")} for r in qt.to_pylist()]
    if json_out:
        print_json(info)
        return
    rows = [("version", v.id), ("dataset", f"{v.dataset} ({v.kind})"), ("refs", ", ".join(info["refs"])),
            ("parents", ", ".join(p[:12] for p in v.parents) or "(none)"), ("created", _when(v.created_at)),
            ("author", v.author), ("message", v.message), ("rows", f"{v.num_rows:,}"),
            ("tokens", f"{v.num_tokens:,}" if v.num_tokens is not None else ""),
            ("stored", f"{_size(v.num_bytes)} in {v.num_shards} shard(s)"),
            ("schema", ", ".join(f"{f['name']}:{f['type']}" for f in (info["schema"] or []))),
            ("lineage", m.lineage), ("metadata", m.metadata), ("side tables", info["tables"] or "")]
    console.print(table(f"{v.dataset}@{v.short_id}", ["", ""], rows))
    if shards:
        console.print(table("Shards", ["#", "key", "rows", "bytes", "checksum"],
                            [(i, e.key, e.rows, e.bytes, e.checksum) for i, e in enumerate(m.shards)]))
    if quarantine:
        console.print(table("Quarantine", ["source", "line", "reason", "raw"],
                            [(q["source"], q["line"], q["reason"], q["raw"][:80]) for q in info["quarantine"]]))


def diff(a: Annotated[str, typer.Argument(help="Older reference.")],
         b: Annotated[str, typer.Argument(help="Newer reference.")],
         rows: Annotated[bool, typer.Option("--rows", help="Also print the added and removed rows.")] = False,
         purpose: PurposeOpt = None, json_out: JsonOpt = False) -> None:
    """Shards, rows and schema changes between two versions (rows are a data read of both)."""
    d = read_store(purpose).diff(a, b)
    if json_out:
        print_json(d.to_dict(rows=rows))
        return
    console.print(table(f"diff {a} -> {b}", ["", ""], [
        ("shards added", len(d.shards_added)), ("shards removed", len(d.shards_removed)),
        ("rows added", f"{d.num_rows_added:,}"), ("rows removed", f"{d.num_rows_removed:,}"),
        ("schema changes", "; ".join(f"{c['column']} {c['change']} {c['from'] or ''}->{c['to'] or ''}"
                                     for c in d.schema_changes) or "none")]))
    if rows:
        for label, t in (("+", d.rows_added), ("-", d.rows_removed)):
            for r in ([] if t is None else t.to_pylist()):
                console.print(f"{label} {r.get('id')}: {str(r.get('text'))[:100]!r}", highlight=False)


def branch(dataset: Annotated[str, typer.Argument(help="Dataset.")],
           name: Annotated[str | None, typer.Argument(help="New branch (omit to list branches and tags).")] = None,
           from_ref: Annotated[str | None, typer.Option("--from", help="Start point (default: the head).")] = None,
           delete: Annotated[bool, typer.Option(help="Delete the branch instead.")] = False,
           json_out: JsonOpt = False) -> None:
    """List, create or delete branches."""
    store = _store()
    if name and delete:
        store.delete_ref(dataset, name, kind="branch")
    elif name:
        store.branch(dataset, name, from_ref=from_ref)
    refs = store.refs(dataset)
    if json_out:
        print_json([r.__dict__ for r in refs])
        return
    console.print(table(f"Refs of {dataset}", ["kind", "name", "version", "updated"],
                        [(r.kind, r.name, (r.version_id or "(empty)")[:12], _when(r.updated_at)) for r in refs]))


def tag(dataset: Annotated[str, typer.Argument(help="Dataset.")],
        name: Annotated[str, typer.Argument(help="Tag name.")],
        ref: Annotated[str | None, typer.Option("--ref", help="Version to tag (default: the head).")] = None,
        delete: Annotated[bool, typer.Option(help="Delete the tag instead.")] = False,
        json_out: JsonOpt = False) -> None:
    """Create (or delete) an immutable tag."""
    store = _store()
    if delete:
        store.delete_ref(dataset, name, kind="tag")
        if json_out:
            print_json({"dataset": dataset, "tag": name, "deleted": True})
            return
        console.print(f"deleted tag {dataset}@{name}")
        return
    r = store.tag(dataset, name, ref=ref)
    if json_out:
        print_json({"dataset": dataset, "tag": name, "version": r.version_id, "deleted": False})
        return
    console.print(f"tagged {dataset}@{name} -> {(r.version_id or '')[:12]}")


def rollback(dataset: Annotated[str, typer.Argument(help="Dataset.")],
             to: Annotated[str, typer.Argument(help="Version id prefix, tag or branch to move the head to.")],
             branch: Annotated[str | None, typer.Option(help="Branch to move (default: the default).")] = None,
             json_out: JsonOpt = False) -> None:
    """Move a branch head to an older version (history is kept; roll forward the same way)."""
    v = _store().rollback(dataset, to, branch=branch)
    if json_out:
        print_json(v.to_dict())
        return
    console.print(f"{dataset}@{branch or 'default branch'} now at {v.short_id} ({v.message!r}, {v.num_rows:,} rows)")


def verify(ref: Annotated[str | None, typer.Argument(help="Reference to check (default: every version).")] = None,
           shallow: Annotated[bool, typer.Option(help="Skip per-block checks of token shards.")] = False,
           purpose: PurposeOpt = None, json_out: JsonOpt = False) -> None:
    """Recompute checksums; exit 1 naming every missing or damaged object."""
    store = read_store(purpose)
    with progress(disable=json_out, transient=True) as bar:
        task = bar.add_task("verify", total=None)
        report = store.verify(ref, deep=not shallow, on_shard=lambda n: bar.advance(task, n))
    if json_out:
        print_json(report.to_dict())
    else:
        console.print(table("Verify", ["", ""], [
            ("versions", report.versions), ("shards", report.shards), ("bytes", _size(report.bytes)),
            ("throughput", f"{report.throughput_bytes_s / 1e9:.2f} GB/s"),
            ("result", "[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]")]))
        for note in report.expired_refs:
            err_console.print(f"[yellow]note[/] {note}: a ref kept on an expired version (forget or retention); "
                              "expected, not damage", highlight=False)
        for p in report.problems:
            err_console.print(f"[red]{p.kind}[/] {p.key} (version {p.version[:12]}"
                              f"{'' if p.shard is None else f', shard {p.shard}'}): {p.message}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


def gc(dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
       grace: Annotated[float | None, typer.Option(help="Grace period in seconds (default GRANARY_GC_GRACE_S).")] =
       None, json_out: JsonOpt = False) -> None:
    """Delete objects that no version references (older than the grace period)."""
    r = _store().gc(dry_run=dry_run, grace_s=grace)
    if json_out:
        print_json(r.to_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(table("gc", ["", ""], [
        ("objects scanned", r.scanned), ("referenced", r.referenced),
        (verb, f"{len(r.deleted)} ({_size(r.deleted_bytes)})"), ("kept (younger than grace)", r.kept_young),
        ("staging dirs " + verb, len(r.staging_removed))]))
    if r.unreadable_manifests:
        err_console.print(f"[red]nothing deleted: {len(r.unreadable_manifests)} manifest(s) unreadable; "
                          "run `granary verify`[/]")


def export(ref: Annotated[str, typer.Argument(help="Reference to export.")],
           output: Annotated[Path, typer.Option("--output", "-o", help="Output file (or folder for hf).")],
           fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl, parquet or hf.")] = "jsonl",
           purpose: PurposeOpt = None, json_out: JsonOpt = False) -> None:
    """Write a documents version to JSONL, Parquet or a Hugging Face dataset folder."""
    from granary.store.export import export as run_export

    store = read_store(purpose)
    v = store.resolve(ref)
    with progress(disable=json_out) as bar:
        task = bar.add_task(f"export {ref}", total=v.num_rows)
        n = run_export(store, v.ref, output, fmt=fmt, on_rows=lambda k: bar.advance(task, k))  # type: ignore[arg-type]
    if json_out:
        print_json({"rows": n, "output": str(output), "format": fmt, "version": v.id})
        return
    console.print(f"exported {n:,} rows of {v.dataset}@{v.short_id} to {output} ({fmt})")


def register(app: typer.Typer) -> None:
    """Add the store commands to the app."""
    for fn in (init, ingest, delete, ls, log, show, diff, branch, tag, rollback, verify, gc, export):
        app.command(fn.__name__)(fn)
