"""The fault handler: a step watchdog, the NaN / loss-spike policy, and SIGTERM turned into checkpoint-and-exit.

Causes of a stop are appended to ``<run_dir>/faults.jsonl`` before the process goes, so the next attempt (which
torchrun's elastic agent starts) can record why it restarted.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from granary.errors import TrainError

EXIT_HANG = 75  # a step ran past its deadline: the process exits with this code so torchrun restarts the job
EXIT_PREEMPTED = 143  # SIGTERM: checkpoint written, then exit like a terminated process


def record_fault(run_dir: Path, cause: str, **facts: Any) -> None:
    """Append one fault record (any rank; one short line per write, so appends from ranks do not interleave)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), "cause": cause, "rank": int(os.environ.get("RANK", "0")),
                       "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), **facts})
    with open(run_dir / "faults.jsonl", "a") as f:
        f.write(line + "\n")


def read_faults(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "faults.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class StepWatchdog:
    """Exit the process (code 75) when one step takes longer than ``timeout_s``: a hung collective, a stalled
    loader. ``beat(step)`` marks progress; the watchdog thread is a daemon."""

    def __init__(self, timeout_s: float, run_dir: Path) -> None:
        self.timeout_s = timeout_s
        self.run_dir = run_dir
        self._step = -1
        self._since = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="granary-step-watchdog", daemon=True)

    def start(self) -> StepWatchdog:
        if self.timeout_s > 0:
            self._thread.start()
        return self

    def beat(self, step: int) -> None:
        self._step, self._since = step, time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            stalled = time.monotonic() - self._since
            if stalled > self.timeout_s:
                record_fault(self.run_dir, "hang", step=self._step + 1, seconds=round(stalled, 1),
                             detail=f"step {self._step + 1} made no progress for {stalled:.0f} s "
                                    "(a collective that never returned or a stalled loader)")
                sys.stderr.write(f"granary train: step {self._step + 1} hung for {stalled:.0f} s; exiting so "
                                 "torchrun restarts the job from the last checkpoint\n")
                sys.stderr.flush()
                os._exit(EXIT_HANG)


class LossGuard:
    """NaN/inf and spike detection on the (all-reduced) loss: returns True when the step's update must be dropped."""

    def __init__(self, policy: str, spike_factor: float) -> None:
        self.policy = policy
        self.spike_factor = spike_factor
        self.mean: float | None = None
        self.skipped = 0

    def bad(self, loss: float, step: int) -> bool:
        spike = (self.spike_factor > 0 and self.mean is not None and loss > self.spike_factor * self.mean)
        if math.isfinite(loss) and not spike:
            self.mean = loss if self.mean is None else 0.9 * self.mean + 0.1 * loss
            return False
        what = f"loss {loss:.4g} at step {step}" + (f" (> {self.spike_factor} x running mean)" if spike else "")
        if self.policy == "raise":
            raise TrainError(f"bad {what}", hint="lower the learning rate, or set fault.nan_policy: skip")
        self.skipped += 1
        return True


class Preemption:
    """SIGTERM sets a flag; the trainer checks it at step boundaries (ranks agree), checkpoints and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def install(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second SIGTERM: go now
            os._exit(EXIT_PREEMPTED)
        self.requested = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
