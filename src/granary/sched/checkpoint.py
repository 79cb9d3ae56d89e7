"""Checkpoint discovery for restarts, and the report a job makes about the step it resumed from.

Layout: a job's ``checkpoint_dir`` holds ``step_<N>/`` directories; one is complete once it contains
the marker file ``_COMPLETE`` (written last, so a crash mid-save never looks complete).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

COMPLETE_MARKER = "_COMPLETE"
_STEP = re.compile(r"^step_(\d+)$")


def latest_checkpoint(checkpoint_dir: str | os.PathLike[str] | None) -> tuple[str, int] | None:
    """(path, step) of the newest complete checkpoint, or None."""
    if not checkpoint_dir:
        return None
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for entry in root.iterdir():
        m = _STEP.match(entry.name)
        if m and (entry / COMPLETE_MARKER).is_file():
            step = int(m.group(1))
            if best is None or step > best[0]:
                best = (step, entry)
    return (str(best[1]), best[0]) if best else None


def save_marker(step_dir: str | os.PathLike[str]) -> None:
    """Mark a checkpoint directory complete (call after every file in it is written and fsynced)."""
    path = Path(step_dir) / COMPLETE_MARKER
    path.write_text("ok\n")


def report_resumed(step: int) -> None:
    """Tell the scheduler which step this run resumed from (no-op outside a scheduled job)."""
    _report({"resumed_step": int(step)})


def _report(data: dict[str, int]) -> None:
    target = os.environ.get("GRANARY_REPORT_FILE")
    if not target:
        return
    tmp = f"{target}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, target)


def read_report(path: str | os.PathLike[str]) -> dict[str, int]:
    """The job's last report (empty if none yet or unreadable mid-write)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
