"""A test job that checkpoints every step and reports the step it resumed from."""

from __future__ import annotations

import os
import sys
import time

from granary.sched.checkpoint import report_resumed, save_marker

steps = int(sys.argv[1])
ckpt = os.environ["GRANARY_CHECKPOINT_DIR"]
start = int(os.environ.get("GRANARY_RESUME_STEP", "0"))
if "GRANARY_RESUME_STEP" in os.environ:
    report_resumed(start)
for step in range(start + 1, steps + 1):
    time.sleep(0.1)
    os.makedirs(f"{ckpt}/step_{step}", exist_ok=True)
    save_marker(f"{ckpt}/step_{step}")
with open(f"{ckpt}/finished_attempt_{os.environ['GRANARY_ATTEMPT']}", "w") as f:
    f.write(str(start))
