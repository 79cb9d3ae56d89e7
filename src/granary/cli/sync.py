"""Remote and backup commands: remote add/list/remove, push, pull, sync, backup create/list/verify/restore/prune."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from granary.cli.output import console, err_console, print_json, table

if TYPE_CHECKING:
    from granary.store import Store
    from granary.store.sync import SyncReport

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", min=1, max=256, help="Parallel object transfers.")]
BwOpt = Annotated[str | None, typer.Option("--bwlimit", help="Bandwidth cap in bytes/s, e.g. 50M or 1.5G.")]

remote_app = typer.Typer(help="Named remotes: other Granary repositories on a path, s3:// or a Granary server.",
                         no_args_is_help=True)
backup_app = typer.Typer(help="Backups of the whole store (catalog and objects), restores and restore drills.",
                         no_args_is_help=True)


def _store() -> Store:
    from granary.store import open_store

    return open_store()


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@contextmanager
def _bytes_bar(label: str, quiet: bool) -> Iterator[tuple[Callable[[int, int], None], Callable[[int], None]]]:
    """Progress callbacks (plan, bytes) driving a bytes/rate bar."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=err_console, disable=quiet, transient=False)
    with bar:
        task = bar.add_task(label, total=None)

        def plan(objects: int, nbytes: int) -> None:
            bar.update(task, total=max(nbytes, 1), description=f"{label} ({objects:,} objects)")

        def moved(n: int) -> None:
            bar.advance(task, n)

        yield plan, moved


def _options(jobs: int, bwlimit: str | None, plan: Any, moved: Any) -> Any:
    from granary.store.sync import TransferOptions
    from granary.store.sync.transfer import parse_rate

    return TransferOptions(jobs=jobs, bwlimit_bytes_s=parse_rate(bwlimit), on_plan=plan, on_bytes=moved)


def _show(report: SyncReport) -> None:
    r = report
    tags = [("tags", ", ".join(r.tags))] if r.tags else []
    if r.tag_conflicts:
        tags.append(("tags left as they are (they name another version there)", ", ".join(r.tag_conflicts)))
    if r.up_to_date:
        console.print(f"{r.dataset}@{r.branch} is up to date with {r.remote} ({(r.new_head or '')[:12]})")
        if tags:
            console.print(table("tags", ["", ""], tags))
        return
    t = r.transfer
    console.print(table(f"{r.direction} {r.dataset}@{r.branch}", ["", ""], [
        ("remote", r.remote), ("head", f"{(r.old_head or 'none')[:12]} -> {(r.new_head or '')[:12]}"),
        ("versions", len(r.versions)), ("objects sent", f"{t.objects:,} ({_size(t.bytes)})"),
        ("objects already there", f"{t.skipped:,}"), ("rate", f"{_size(t.bytes_per_s)}/s"),
        ("forced", "yes (audited)" if r.forced else "no"), *tags]))


# -- remotes ------------------------------------------------------------------------------------------------
@remote_app.command("add")
def remote_add(name: Annotated[str, typer.Argument(help="Short name.")],
               url: Annotated[str, typer.Argument(help="A path, s3://bucket/prefix or https://server.")],
               endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint (MinIO, Ceph, ...).")] = None,
               replace: Annotated[bool, typer.Option(help="Replace an existing remote of that name.")] = False,
               json_out: JsonOpt = False) -> None:
    """Record a remote under a name."""
    from granary.store.sync import add_remote

    opts = {"endpoint_url": endpoint_url} if endpoint_url else None
    row = add_remote(_store(), name, url, options=opts, replace=replace)
    if json_out:
        print_json(row)
        return
    console.print(f"remote {name} -> {url}")


@remote_app.command("list")
def remote_list(json_out: JsonOpt = False) -> None:
    """List the named remotes."""
    from granary.store.sync import list_remotes

    rows = list_remotes(_store())
    if json_out:
        print_json(rows)
        return
    console.print(table("Remotes", ["name", "url", "added", "by"], [
        (r["name"], r["url"], _when(r["created_at"]), r["created_by"]) for r in rows]))


@remote_app.command("remove")
def remote_remove(name: Annotated[str, typer.Argument(help="Remote name.")], json_out: JsonOpt = False) -> None:
    """Forget a named remote (nothing on the remote is deleted)."""
    from granary.store.sync import remove_remote

    remove_remote(_store(), name)
    if json_out:
        print_json({"removed": name})
        return
    console.print(f"removed remote {name}")


# -- push / pull / sync ---------------------------------------------------------------------------------------
def push(ref: Annotated[str, typer.Argument(help="DATASET[@BRANCH|TAG|VERSION] to send.")],
         remote: Annotated[str, typer.Argument(help="Remote name, path or s3:// URL.")],
         to_branch: Annotated[str | None, typer.Option(help="Remote branch (default: the same name).")] = None,
         force: Annotated[bool, typer.Option(help="Move a diverged remote branch anyway (audited).")] = False,
         purpose: Annotated[str | None, typer.Option(help="Purpose of the read, checked against the policy.")] =
         None, jobs: JobsOpt = 8, bwlimit: BwOpt = None, json_out: JsonOpt = False) -> None:
    """Send a dataset branch and its history; only objects the remote lacks travel."""
    from granary.store.sync import open_remote
    from granary.store.sync import push as run

    store = _store()
    with _bytes_bar(f"push {ref}", json_out) as (plan, moved):
        report = run(store, ref, open_remote(store, remote), to_branch=to_branch, force=force, purpose=purpose,
                     options=_options(jobs, bwlimit, plan, moved))
    print_json(report.to_dict()) if json_out else _show(report)


def pull(ref: Annotated[str, typer.Argument(help="DATASET[@BRANCH] to fetch.")],
         remote: Annotated[str, typer.Argument(help="Remote name, path or s3:// URL.")],
         to_branch: Annotated[str | None, typer.Option(help="Local branch (default: the same name).")] = None,
         force: Annotated[bool, typer.Option(help="Move a diverged local branch anyway (audited).")] = False,
         jobs: JobsOpt = 8, bwlimit: BwOpt = None, json_out: JsonOpt = False) -> None:
    """Fetch a dataset branch and the versions this store lacks."""
    from granary.store.sync import open_remote
    from granary.store.sync import pull as run

    dataset, _, branch = ref.partition("@")
    store = _store()
    with _bytes_bar(f"pull {ref}", json_out) as (plan, moved):
        report = run(store, dataset, open_remote(store, remote), branch=branch or None, to_branch=to_branch,
                     force=force, options=_options(jobs, bwlimit, plan, moved))
    print_json(report.to_dict()) if json_out else _show(report)


def sync(ref: Annotated[str, typer.Argument(help="DATASET[@BRANCH].")],
         remote: Annotated[str, typer.Argument(help="Remote name, path or s3:// URL.")],
         purpose: Annotated[str | None, typer.Option(help="Purpose of the read, checked against the policy.")] =
         None, jobs: JobsOpt = 8, bwlimit: BwOpt = None, json_out: JsonOpt = False) -> None:
    """Pull (fast-forward) then push, so both sides end at the same head."""
    from granary.store.sync import open_remote
    from granary.store.sync import sync as run

    store = _store()
    with _bytes_bar(f"sync {ref}", json_out) as (plan, moved):
        reports = run(store, ref, open_remote(store, remote), purpose=purpose,
                      options=_options(jobs, bwlimit, plan, moved))
    if json_out:
        print_json([r.to_dict() for r in reports])
        return
    for r in reports:
        _show(r)


# -- backups --------------------------------------------------------------------------------------------------
def _dest(store: Store, url: str) -> Any:
    from granary.errors import SyncError
    from granary.store.sync import open_remote
    from granary.store.sync.remote import Remote

    dest = open_remote(store, url)
    if not isinstance(dest, Remote):
        raise SyncError(f"backups go to a folder or an s3:// URL, not to a Granary server ({url})",
                        hint="give a folder or s3:// URL; a server takes datasets by `granary push`")
    return dest


@backup_app.command("create")
def backup_create(dest: Annotated[str, typer.Argument(help="Folder, s3:// URL or remote name.")],
                  jobs: JobsOpt = 8, bwlimit: BwOpt = None, json_out: JsonOpt = False) -> None:
    """Back up the catalog and every object it references (incremental: known objects are not sent again)."""
    from granary.store.sync.backup import create_backup
    from granary.store.sync.transfer import parse_rate

    store = _store()
    with _bytes_bar("backup", json_out) as (plan, moved):
        r = create_backup(store, _dest(store, dest), jobs=jobs, bwlimit_bytes_s=parse_rate(bwlimit), on_plan=plan,
                          on_bytes=moved)
    if json_out:
        print_json(r.to_dict())
        return
    console.print(table(f"backup {r.id}", ["", ""], [
        ("destination", dest), ("versions", r.details["versions"]),
        ("objects sent", f"{r.transfer.objects:,} ({_size(r.transfer.bytes)})"),
        ("objects already backed up", f"{r.transfer.skipped:,}"),
        ("catalog", _size(r.details["catalog_bytes"]))]))


@backup_app.command("list")
def backup_list(dest: Annotated[str, typer.Argument(help="Folder, s3:// URL or remote name.")],
                json_out: JsonOpt = False) -> None:
    """List the complete backups at a destination."""
    from granary.store.sync.backup import list_backups

    docs = list_backups(_dest(_store(), dest))
    if json_out:
        print_json(docs)
        return
    console.print(table("Backups", ["id", "created", "catalog", "versions", "objects", "bytes"], [
        (d["id"], _when(d["created_at"]), d["catalog"]["kind"], d["versions"], f"{d['objects']['count']:,}",
         _size(d["objects"]["bytes"])) for d in docs]))


@backup_app.command("verify")
def backup_verify(dest: Annotated[str, typer.Argument(help="Folder, s3:// URL or remote name.")],
                  backup_id: Annotated[str | None, typer.Argument(help="Backup id (default: the newest).")] = None,
                  scratch_url: Annotated[str | None, typer.Option(help="PostgreSQL server for the drill's scratch "
                                                                           "database (PostgreSQL backups).")] = None,
                  json_out: JsonOpt = False) -> None:
    """Restore drill: restore into a scratch store, compare the catalog, verify every version's checksums."""
    from granary.store.sync.backup import verify_backup

    r = verify_backup(_dest(_store(), dest), backup_id, scratch_pg_url=scratch_url)
    if json_out:
        print_json(r.to_dict())
    else:
        console.print(table(f"restore drill of {r.id}", ["", ""], [
            ("catalog tables identical", "yes" if not any(p.startswith("table") for p in r.problems) else "no"),
            ("versions verified", r.details.get("versions_verified")),
            ("shards verified", r.details.get("shards_verified")),
            ("result", "[green]ok[/]" if r.ok else f"[red]{len(r.problems)} problem(s)[/]")]))
        for p in r.problems:
            err_console.print(f"[red]problem[/] {p}", highlight=False)
    if not r.ok:
        raise typer.Exit(1)


@backup_app.command("restore")
def backup_restore(dest: Annotated[str, typer.Argument(help="Folder, s3:// URL or remote name.")],
                   backup_id: Annotated[str | None, typer.Argument(help="Backup id (default: the newest).")] = None,
                   home: Annotated[Path, typer.Option(help="New Granary home to restore into.")] = Path("restored"),
                   catalog_url: Annotated[str | None, typer.Option(help="Restore the catalog here instead (an "
                                                                            "empty PostgreSQL database).")] = None,
                   force: Annotated[bool, typer.Option(help="Restore into a catalog that is not empty.")] = False,
                   jobs: JobsOpt = 8, json_out: JsonOpt = False) -> None:
    """Restore a backup into a new home (objects and catalog), then check the catalog is identical."""
    from granary.store.sync.backup import restore_backup

    home = home.expanduser().resolve()
    url = catalog_url or f"sqlite:///{home / 'catalog.db'}"
    with _bytes_bar("restore", json_out) as (plan, moved):
        r = restore_backup(_dest(_store(), dest), backup_id, catalog_url=url, storage_url=str(home / "objects"),
                           home=home, force=force, jobs=jobs, on_plan=plan, on_bytes=moved)
    if json_out:
        print_json({**r.to_dict(), "home": str(home)})
    else:
        console.print(f"restored backup {r.id} into {home} ({r.details['versions']} versions, "
                      f"{r.transfer.objects:,} objects); use it with GRANARY_HOME={home}"
                      + ("" if catalog_url is None else f" GRANARY_CATALOG_URL={catalog_url}"))
        for p in r.problems:
            err_console.print(f"[red]problem[/] {p}", highlight=False)
    if not r.ok:
        raise typer.Exit(1)


@backup_app.command("prune")
def backup_prune(dest: Annotated[str, typer.Argument(help="Folder, s3:// URL or remote name.")],
                 keep_last: Annotated[int, typer.Option(min=1)] = 1,
                 keep_daily: Annotated[int, typer.Option(min=0)] = 7,
                 keep_weekly: Annotated[int, typer.Option(min=0)] = 4,
                 keep_monthly: Annotated[int, typer.Option(min=0)] = 12,
                 dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
                 json_out: JsonOpt = False) -> None:
    """Apply retention: the newest backup of each recent day, week and month is kept; the rest is deleted."""
    from granary.store.sync.backup import prune_backups

    r = prune_backups(_dest(_store(), dest), keep_last=keep_last, keep_daily=keep_daily, keep_weekly=keep_weekly,
                      keep_monthly=keep_monthly, dry_run=dry_run)
    if json_out:
        print_json(r)
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(f"kept {len(r['kept'])} backup(s); {verb} {len(r['deleted'])} backup(s) and "
                  f"{r['objects_deleted']:,} object(s) no kept backup needs")


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def register(app: typer.Typer) -> None:
    """Add the remote, push/pull/sync and backup commands to the app."""
    app.add_typer(remote_app, name="remote")
    app.add_typer(backup_app, name="backup")
    for fn in (push, pull, sync):
        app.command(fn.__name__)(fn)
