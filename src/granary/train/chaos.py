"""Fault injection for tests and drills: ``GRANARY_TRAIN_CHAOS=ACTION:RANK:STEP[:PHASE],...``.

``kill`` sends SIGKILL to this rank (a real kill -9: no handler runs, no file is flushed); ``hang`` stops the
rank forever (the step watchdog or the collective timeout must turn it into a restart). ``PHASE`` is ``step``
(after the optimiser step, before any checkpoint; the default) or ``save`` (in the middle of a checkpoint save,
after its files are published and before the commit). Each fault fires once per run: a marker file in the run
folder (``chaos-<n>.fired``, created before the fault) keeps restarted attempts from firing it again.

A straggler: ``GRANARY_TRAIN_SLOW=RANK:SECONDS[,RANK:SECONDS...]`` makes that rank sleep ``SECONDS`` after
computing each step's gradients (every attempt, every step), as a slower machine would.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

VAR = "GRANARY_TRAIN_CHAOS"
SLOW_VAR = "GRANARY_TRAIN_SLOW"


def slow_seconds(rank: int) -> float:
    """The delay ``GRANARY_TRAIN_SLOW`` gives ``rank`` per step (0.0 if none)."""
    spec = os.environ.get(SLOW_VAR, "").strip()
    total = 0.0
    for item in filter(None, (x.strip() for x in spec.split(","))):
        try:
            want_rank, seconds = item.split(":")
            if int(want_rank) == rank:
                total += float(seconds)
        except ValueError:
            raise ValueError(f"{SLOW_VAR}={spec!r}: {item!r} is not RANK:SECONDS (say 1:0.1)") from None
    return total


def maybe_slow(rank: int) -> None:
    """Sleep this rank's straggler delay, if ``GRANARY_TRAIN_SLOW`` names it."""
    seconds = slow_seconds(rank)
    if seconds > 0:
        time.sleep(seconds)


def maybe_fail(phase: str, step: int, rank: int, run_dir: Path) -> None:
    spec = os.environ.get(VAR)
    if not spec:
        return
    for n, item in enumerate(spec.split(",")):
        parts = item.strip().split(":")
        action, want_rank, want_step = parts[0], int(parts[1]), int(parts[2])
        want_phase = parts[3] if len(parts) > 3 else "step"
        if (want_rank, want_step, want_phase) != (rank, step, phase):
            continue
        marker = run_dir / f"chaos-{n}.fired"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "hang":
            while True:
                time.sleep(3600)
