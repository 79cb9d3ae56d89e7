"""Shared CLI output helpers: consoles, JSON printing, tables, progress bars and error rendering."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from granary.errors import GranaryError

console = Console()
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    """Print an object as JSON on stdout (for `--json`)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
          no_wrap: Sequence[str] = ()) -> Table:
    """Build a rich table from column names and rows (columns named in ``no_wrap`` are never folded)."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold", no_wrap=c in no_wrap)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


def progress(*, transient: bool = False, disable: bool = False) -> Progress:
    """A progress bar with count, percentage, elapsed and remaining time (on stderr)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=disable,
    )


def fail(exc: GranaryError | str, code: int = 1) -> NoReturn:
    """Print a user error in one or two lines (message, then what to do) and exit non-zero."""
    if isinstance(exc, GranaryError):
        message = Exception.__str__(exc)
        hint = exc.hint
    else:
        message, hint = exc, None
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {hint}", highlight=False, soft_wrap=True)
    raise SystemExit(code)
