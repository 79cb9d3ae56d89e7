"""The torchrun example: two gloo ranks on CPU train from the loader, restart from a checkpoint, and the resumed
job sees exactly the batches and losses of the uninterrupted one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "train_stream.py"


@pytest.mark.slow
def test_two_rank_restart_matches_the_uninterrupted_run() -> None:
    out = subprocess.run([sys.executable, str(EXAMPLE), "--self-check"], capture_output=True, text=True, timeout=240)
    # the example passes on torchrun's stderr when a run fails: show it whole enough to read the cause
    assert out.returncode == 0, f"exit code {out.returncode}\n{out.stdout}\n--- stderr ---\n{out.stderr[-12000:]}"
    assert out.stdout.count("identical batches and losses") == 2 and out.stdout.strip().endswith("OK")
