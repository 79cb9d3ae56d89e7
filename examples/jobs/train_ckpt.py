"""A toy training loop that checkpoints every step, resumes after a restart, and tells the scheduler from where.

Run under the scheduler (see dag.yaml): it gets GRANARY_CHECKPOINT_DIR, and after a restart
GRANARY_RESUME_FROM / GRANARY_RESUME_STEP. SIGTERM (preemption) saves a checkpoint and exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from granary.sched.checkpoint import report_resumed, save_marker

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 100
ckpt = os.environ.get("GRANARY_CHECKPOINT_DIR", "/tmp/granary-example-ckpt")
start = int(os.environ.get("GRANARY_RESUME_STEP", "0"))
if start:
    report_resumed(start)
    print(f"resuming from {os.environ.get('GRANARY_RESUME_FROM')} (step {start})", flush=True)
stopping = False


def _on_term(signum: int, frame: object) -> None:
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, _on_term)
for step in range(start + 1, steps + 1):
    time.sleep(0.1)  # one "training step"
    path = os.path.join(ckpt, f"step_{step}")
    os.makedirs(path, exist_ok=True)
    save_marker(path)  # written last: a crash mid-save never looks complete
    if stopping:
        print(f"preempted at step {step}; checkpoint saved", flush=True)
        sys.exit(143)
print(f"done after {steps} steps", flush=True)
