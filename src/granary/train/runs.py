"""A training run's records for readers (the HTTP API, dashboards): its status and loss curve from the run folder.

A run's durable record is its ``checkpoint`` dataset in the store (each version: the step, the recipe, the loader
position and the lineage, see :mod:`granary.train.checkpoint`); its folder (``recipe.run_dir``, default
``$GRANARY_HOME/train/<name>``) holds what rank 0 logged: ``metrics.jsonl``, ``restarts.jsonl``, ``faults.jsonl``.
Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

RUNNING_WINDOW_S = 300.0  # a run that logged within this long and has not reached its last step is running
MAX_FILE_BYTES = 64 << 20  # a run folder's log read by a server: at most this much of its end
CURVE_KEYS = ("loss", "grad_norm", "learning_rate", "tokens_per_second", "step_seconds", "data_seconds", "mfu",
              "eval_loss", "eval_perplexity")
RunStatus = Literal["finished", "running", "stopped"]


@dataclass(frozen=True)
class RunFiles:
    """What a run folder holds (empty lists when the folder is not on this machine).

    Attributes:
        folder: the run folder.
        metrics: ``metrics.jsonl`` records (a restarted attempt repeats the steps after its checkpoint).
        restarts: ``restarts.jsonl`` records (attempt, cause, step resumed from, checkpoint).
        faults: ``faults.jsonl`` records (watchdog and loss-guard causes).
        updated_at: when the folder's logs last changed (None: no logs).
    """

    folder: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    restarts: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    updated_at: float | None = None


def run_folder(metadata: dict[str, Any], home: Path) -> Path:
    """The run folder named by a checkpoint's metadata (its recipe's ``run_dir``, else ``home/train/<run>``)."""
    recipe = metadata.get("recipe") or {}
    if recipe.get("run_dir"):
        return Path(str(recipe["run_dir"]))
    return home / "train" / str(metadata.get("run") or recipe.get("name") or "")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (a torn last line, as while a writer appends, is skipped)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - MAX_FILE_BYTES))
            data = fh.read()
    except OSError:
        return []
    if size > MAX_FILE_BYTES:
        data = data.split(b"\n", 1)[-1]  # the first line is cut
    out = []
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def read_run_files(folder: Path) -> RunFiles:
    """Read a run folder's logs."""
    times = []
    for name in ("metrics.jsonl", "restarts.jsonl", "faults.jsonl"):
        with contextlib.suppress(OSError):  # not written (yet), or not on this machine
            times.append((folder / name).stat().st_mtime)
    return RunFiles(folder=folder, metrics=read_jsonl(folder / "metrics.jsonl"),
                    restarts=read_jsonl(folder / "restarts.jsonl"), faults=read_jsonl(folder / "faults.jsonl"),
                    updated_at=max(times) if times else None)


def run_status(step: int, steps: int | None, updated_at: float | None, *, now: float | None = None) -> RunStatus:
    """``finished`` once a checkpoint of the last step exists; else ``running`` while the run logs, ``stopped``."""
    if steps is not None and step >= steps:
        return "finished"
    now = time.time() if now is None else now
    if updated_at is not None and now - updated_at < RUNNING_WINDOW_S:
        return "running"
    return "stopped"


def loss_curve(metrics: list[dict[str, Any]], *, max_points: int = 1000) -> list[dict[str, Any]]:
    """One point per step (the latest attempt's, since a restart repeats the steps after its checkpoint), with the
    curve's values; evenly thinned to at most ``max_points`` points, always keeping the last step."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    by_step: dict[int, dict[str, Any]] = {}
    for record in metrics:
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        point = by_step.setdefault(step, {"step": step})
        if "loss" in record and "loss" in point:  # a repeated training step: the later attempt replaces it
            point = by_step[step] = {"step": step}
        for key in CURVE_KEYS:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                point[key] = float(value)
        if "time" in record:
            point["time"] = record["time"]
    points = [by_step[s] for s in sorted(by_step)]
    if len(points) <= max_points:
        return points
    stride = len(points) / max_points
    picked = [points[int(i * stride)] for i in range(max_points - 1)]
    return [*picked, points[-1]]
