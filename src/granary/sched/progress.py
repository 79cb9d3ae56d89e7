"""Step times of a running training job, read by the node agent from the run's ``metrics.jsonl`` for the job's
goodput model (what the controller fits, see :mod:`granary.sched.goodput`)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WARMUP_STEPS = 2  # the first steps of an attempt (lazy initialisation, a cold loader) are not its speed
WINDOW = 20  # the median of this many recent steps


@dataclass
class StepTimes:
    """Follows one attempt's metrics file from a byte offset; only steps logged after ``since`` count."""

    run_dir: Path
    since: float
    offset: int = 0
    seen: int = 0
    recent: list[float] = field(default_factory=list)

    def read(self) -> dict[str, Any] | None:
        """New steps since the last call; the summary (median step seconds, steps seen) or None when none."""
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return None
        end = chunk.rfind(b"\n") + 1  # a line being written is read next time
        self.offset += end
        new = 0
        for line in chunk[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            seconds = rec.get("step_seconds")
            if not isinstance(seconds, (int, float)) or seconds <= 0 or rec.get("time", 0) < self.since:
                continue
            self.seen += 1
            if self.seen > WARMUP_STEPS:
                self.recent = [*self.recent, float(seconds)][-WINDOW:]
                new += 1
        if not new:
            return None
        return {"step_seconds": statistics.median(self.recent), "steps": self.seen - WARMUP_STEPS}
