"""Entry point of the `granary` command: builds the Typer app from the command-group modules."""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any

import typer

from granary.cli.output import fail
from granary.errors import GranaryError

app = typer.Typer(
    name="granary",
    help="Granary: versioned datasets, curation, streaming, scheduling and governance for AI training data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _version(value: bool) -> None:
    if value:
        from granary import __version__

        sys.stdout.write(f"granary {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print Granary's version and exit."),
) -> None:
    """Granary: versioned datasets, curation, streaming, scheduling and governance for AI training data."""


# Each module defines `register(app: typer.Typer) -> None`. Add a subsystem by adding its module here.
_GROUPS = (
    "granary.cli.store",
    "granary.cli.secure",
    "granary.cli.demo",
    "granary.cli.curate",
    "granary.cli.sched",
    "granary.cli.stream",
    "granary.cli.gateway",
    "granary.cli.sync",
    "granary.cli.recurring",
    "granary.cli.live",
    "granary.cli.monitor",
    "granary.cli.watch",
    "granary.cli.energy",
    "granary.cli.server",
    "granary.cli.train",
    "granary.cli.model",
    "granary.cli.fed",
)

for _module in _GROUPS:
    importlib.import_module(_module).register(app)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors raised by a command into a one-or-two-line message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GranaryError as exc:
            fail(exc)
        except ValueError as exc:  # bad arguments that reached the library
            fail(str(exc))

    return wrapper


def _guard_all(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        if command.callback is not None and not getattr(command.callback, "__wrapped__", None):
            command.callback = _guard(command.callback)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _guard_all(group.typer_instance)


_guard_all(app)


def main() -> None:
    """Run the CLI; user errors become a short message and exit code 1, never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=True)
    except GranaryError as exc:
        fail(exc)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
