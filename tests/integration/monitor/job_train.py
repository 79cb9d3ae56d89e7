"""A test training job: checkpoints and pushes its step every 0.1 s; with HANG_AT it hangs on its first attempt."""

from __future__ import annotations

import os
import sys
import time

from granary.monitor.push import push
from granary.sched.checkpoint import report_resumed, save_marker

steps = int(sys.argv[1])
hang_at = int(os.environ.get("HANG_AT", "0"))
ckpt = os.environ["GRANARY_CHECKPOINT_DIR"]
attempt = os.environ["GRANARY_ATTEMPT"]
start = int(os.environ.get("GRANARY_RESUME_STEP", "0"))
if "GRANARY_RESUME_STEP" in os.environ:
    report_resumed(start)
for step in range(start + 1, steps + 1):
    time.sleep(0.1)
    os.makedirs(f"{ckpt}/step_{step}", exist_ok=True)
    save_marker(f"{ckpt}/step_{step}")
    with open(f"{ckpt}/steps.log", "a") as f:
        f.write(f"{attempt} {step}\n")
    push({"granary_train_step": step, "granary_train_loss": 2.0 + 1.0 / step}, labels={"rank": "0"})
    if step == hang_at and attempt == "1":
        while True:  # hung: no progress, no exit (SIGTERM ends it)
            time.sleep(1)
with open(f"{ckpt}/finished_attempt_{attempt}", "w") as f:
    f.write(str(start))
