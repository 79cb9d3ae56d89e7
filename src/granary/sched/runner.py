"""Runs one job process for the local agent and leaves its exit code and resource use in a directory.

Usage: ``python -m granary.sched.runner ATTEMPT_DIR -- COMMAND...`` (or ``--shell "string"``). The agent
starts it in its own session; SIGTERM to the session reaches the job, which may checkpoint before exiting.
The exit code lands in ``ATTEMPT_DIR/exit_code`` atomically, so an agent that restarts can still read it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run the command; write ``exit_code`` and ``usage.json``; return the exit code."""
    if len(argv) < 3 or argv[1] not in ("--", "--shell"):
        sys.stderr.write("usage: python -m granary.sched.runner ATTEMPT_DIR -- COMMAND... | --shell STRING\n")
        return 2
    out = Path(argv[0])
    shell = argv[1] == "--shell"
    cmd: str | list[str] = argv[2] if shell else argv[2:]
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the job gets it from the session; we wait for the job
    with open(out / "log.txt", "ab", buffering=0) as log:
        proc = subprocess.Popen(cmd, shell=shell, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
        (out / "job_pid").write_text(str(proc.pid))
        code = proc.wait()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    _atomic(out / "usage.json", json.dumps({"max_rss_bytes": usage.ru_maxrss * 1024,
                                            "cpu_s": usage.ru_utime + usage.ru_stime}))
    _atomic(out / "exit_code", str(code))
    return code


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":  # pragma: no cover - exercised through the agent in tests
    sys.exit(main(sys.argv[1:]))
