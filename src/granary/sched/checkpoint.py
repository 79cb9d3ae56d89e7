"""Checkpoint discovery for restarts, and the report a job makes about the step it resumed from.

Layout: a job's ``checkpoint_dir`` holds ``step_<N>/`` directories; one is complete once it contains
the marker file ``_COMPLETE`` (written last, so a crash mid-save never looks complete).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

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


def report_run(run_dir: str | os.PathLike[str], *, local_batch: float, world_size: int) -> None:
    """Tell the scheduler where this run logs its steps and how many samples each GPU/rank takes per step: the
    agent reads the step times from ``run_dir/metrics.jsonl`` for the job's goodput model (no-op outside a job)."""
    _report({"run_dir": str(run_dir), "local_batch": float(local_batch), "world_size": int(world_size)})


def report_noise_scale(phi: float) -> None:
    """Tell the scheduler the run's measured gradient noise scale (no-op outside a job)."""
    _report({"noise_scale": float(phi)})


def _report(data: dict[str, Any]) -> None:
    """Merge ``data`` into the job's report file (written whole, atomically)."""
    target = os.environ.get("GRANARY_REPORT_FILE")
    if not target:
        return
    merged = {**read_report(target), **data}
    tmp = f"{target}.tmp"
    with open(tmp, "w") as f:
        json.dump(merged, f)
    os.replace(tmp, target)


def read_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The job's last report (empty if none yet or unreadable mid-write)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
