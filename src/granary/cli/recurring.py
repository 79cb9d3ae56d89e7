"""Recurring jobs: `granary schedule add|list|pause|resume|remove` and `granary backup schedule`."""

from __future__ import annotations

import datetime as dt
import os
import shlex
from typing import TYPE_CHECKING, Annotated

import typer

from granary.cli.output import console, print_json, table

if TYPE_CHECKING:
    from granary.catalog import Catalog
    from granary.sched.model import JobSpec

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
EveryOpt = Annotated[str, typer.Option("--every", help="Period: 30s, 15m, 6h, 1d, 1w.")]
StartOpt = Annotated[str | None, typer.Option("--start-at", help="First run, ISO time (default: now).")]
OverlapOpt = Annotated[str, typer.Option("--overlap", help="skip (default): skip a period while the last run "
                                                           "is unfinished; allow: start anyway.")]

schedule_app = typer.Typer(help="Recurring jobs the scheduler's controller submits every period.",
                           no_args_is_help=True)


def _catalog() -> Catalog:
    from granary.catalog import open_catalog
    from granary.config import Settings

    return open_catalog(Settings.from_env().catalog_url)


def _start(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO time such as 2026-12-06T02:00") from None
    return (when if when.tzinfo else when.astimezone()).timestamp()


def _iso(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def _add(name: str, spec: JobSpec, every: str, start_at: str | None, overlap: str, replace: bool,
         json_out: bool) -> None:
    from granary.sched.recurring import add_recurring, parse_every

    try:
        every_s = parse_every(every)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    rec = add_recurring(_catalog(), name, spec, every_s=every_s, start_at=_start(start_at),
                        overlap=overlap, replace=replace)  # type: ignore[arg-type]
    if json_out:
        print_json(rec.to_dict())
        return
    console.print(table(f"recurring job {name}", ["", ""], [
        ("command", spec.command if isinstance(spec.command, str) else shlex.join(spec.command or ())),
        ("every", every), ("first run", _iso(rec.next_at)), ("overlap", overlap)]))
    console.print("the scheduler's controller (`granary sched up`) submits it when due")


@schedule_app.command("add")
def schedule_add(name: Annotated[str, typer.Argument(help="Name of the recurring job.")],
                 command: Annotated[list[str], typer.Argument(help="Command to run (after --).")],
                 every: EveryOpt = "1d", start_at: StartOpt = None, overlap: OverlapOpt = "skip",
                 tenant: Annotated[str, typer.Option(help="Tenant / queue.")] = "default",
                 replace: Annotated[bool, typer.Option("--replace", help="Replace one of that name.")] = False,
                 json_out: JsonOpt = False) -> None:
    """Run a command every period as a scheduler job (in the current directory, with this environment's store)."""
    from granary.sched.model import JobSpec

    spec = JobSpec(name=name, tenant=tenant, command=tuple(command), workdir=os.getcwd(), env=_store_env())
    _add(name, spec, every, start_at, overlap, replace, json_out)


@schedule_app.command("list")
def schedule_list(json_out: JsonOpt = False) -> None:
    """Every recurring job: period, next run, runs and skipped periods, last job."""
    from granary.sched.recurring import list_recurring

    recs = list_recurring(_catalog())
    if json_out:
        print_json([r.to_dict() for r in recs])
        return
    console.print(table("recurring jobs", ["name", "every", "next run", "enabled", "runs", "skipped", "last job"],
                        [(r.name, f"{r.every_s:g} s", _iso(r.next_at), "yes" if r.enabled else "paused", r.runs,
                          r.skipped, r.last_job_id or "-") for r in recs]))


@schedule_app.command("pause")
def schedule_pause(name: Annotated[str, typer.Argument(help="Name of the recurring job.")],
                   json_out: JsonOpt = False) -> None:
    """Stop submitting a recurring job until resumed."""
    from granary.sched.recurring import set_enabled

    set_enabled(_catalog(), name, False)
    _done(name, "paused", json_out)


@schedule_app.command("resume")
def schedule_resume(name: Annotated[str, typer.Argument(help="Name of the recurring job.")],
                    json_out: JsonOpt = False) -> None:
    """Submit a paused recurring job again when due."""
    from granary.sched.recurring import set_enabled

    set_enabled(_catalog(), name, True)
    _done(name, "resumed", json_out)


@schedule_app.command("remove")
def schedule_remove(name: Annotated[str, typer.Argument(help="Name of the recurring job.")],
                    json_out: JsonOpt = False) -> None:
    """Forget a recurring job (jobs it already submitted are not touched)."""
    from granary.sched.recurring import remove_recurring

    remove_recurring(_catalog(), name)
    _done(name, "removed", json_out)


def _done(name: str, what: str, json_out: bool) -> None:
    if json_out:
        print_json({"name": name, what: True})
    else:
        console.print(f"{what} {name}")


def backup_schedule(dest: Annotated[str, typer.Argument(help="Folder, s3:// URL or remote name.")],
                    every: EveryOpt = "1d", start_at: StartOpt = None,
                    keep_last: Annotated[int, typer.Option(min=1)] = 1,
                    keep_daily: Annotated[int, typer.Option(min=0)] = 7,
                    keep_weekly: Annotated[int, typer.Option(min=0)] = 4,
                    keep_monthly: Annotated[int, typer.Option(min=0)] = 12,
                    name: Annotated[str, typer.Option(help="Name of the recurring job.")] = "backup",
                    replace: Annotated[bool, typer.Option("--replace", help="Replace one of that name.")] = False,
                    json_out: JsonOpt = False) -> None:
    """Back up every period through the scheduler, then apply retention (create, then prune)."""
    from granary.sched.model import JobSpec
    from granary.store import open_store
    from granary.store.sync.registry import open_remote
    from granary.store.sync.remote import Remote

    if not isinstance(open_remote(open_store(), dest), Remote):  # a typo fails now, not at 2 am
        raise typer.BadParameter("backups go to a folder or an s3:// URL, not to a Granary server")
    exe = _granary()
    keep = (f"--keep-last {keep_last} --keep-daily {keep_daily} --keep-weekly {keep_weekly} "
            f"--keep-monthly {keep_monthly}")
    where = shlex.quote(dest)
    command = f"{exe} backup create {where} --json && {exe} backup prune {where} {keep} --json"
    spec = JobSpec(name=name, command=command, workdir=os.getcwd(), env=_store_env())
    _add(name, spec, every, start_at, "skip", replace, json_out)


def _granary() -> str:
    """The command line that runs this installation's CLI (quoted for a shell)."""
    import sys

    return shlex.join([sys.executable, "-m", "granary.cli.main"])


def _store_env() -> dict[str, str]:
    """The store this command works on, so the job works on the same one wherever the agent runs it."""
    from granary.config import Settings

    s = Settings.from_env()
    return {"GRANARY_HOME": str(s.home), "GRANARY_CATALOG_URL": s.catalog_url, "GRANARY_STORAGE_URL": s.storage_url}


def register(app: typer.Typer) -> None:
    from granary.cli.sync import backup_app

    app.add_typer(schedule_app, name="schedule")
    backup_app.command("schedule")(backup_schedule)
