"""Local executor: job processes on this machine, one session each, GPUs pinned by CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from granary.sched.executors.base import Executor, Status, command_line
from granary.sched.model import JobSpec

log = logging.getLogger(__name__)


@dataclass
class _Proc:
    pid: int
    dir: Path
    popen: subprocess.Popen[bytes] | None
    term_at: float | None = None
    kill_at: float | None = None
    meta: dict[str, str] = field(default_factory=dict)


class LocalExecutor(Executor):
    """Starts each attempt through :mod:`granary.sched.runner` in its own session under ``work_dir``.

    The runner writes the exit code to a file, so an agent that restarts re-adopts running attempts by
    their directory (see :meth:`adopt`) instead of losing or re-running them.

    Args:
        work_dir: where attempt directories (log, exit code, usage, report) live.
    """

    name = "local"

    def __init__(self, work_dir: str | os.PathLike[str] = "sched-attempts") -> None:
        self.work_dir = Path(work_dir)
        self.procs: dict[str, _Proc] = {}

    def attempt_dir(self, attempt_name: str) -> Path:
        """The directory of an attempt."""
        return self.work_dir / attempt_name

    def launch(self, attempt_name: str, spec: JobSpec, env: dict[str, str]) -> str:
        d = self.attempt_dir(attempt_name)
        d.mkdir(parents=True, exist_ok=True)
        if (d / "runner_pid").exists():
            if self.adopt(attempt_name):
                return attempt_name  # already launched by an earlier agent life: never launch twice
            raise RuntimeError(f"attempt {attempt_name} was launched before and its process is gone")
        full_env = {**os.environ, **env}
        argv = [sys.executable, "-m", "granary.sched.runner", str(d)]
        cmd = command_line(spec)
        argv += ["--shell", cmd]
        popen = subprocess.Popen(argv, env=full_env, cwd=spec.workdir or None, start_new_session=True,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (d / "runner_pid").write_text(str(popen.pid))
        self.procs[attempt_name] = _Proc(popen.pid, d, popen)
        return attempt_name

    def adopt(self, attempt_name: str) -> bool:
        """Track an attempt launched by an earlier agent process; False if it is not running any more."""
        d = self.attempt_dir(attempt_name)
        try:
            pid = int((d / "runner_pid").read_text())
        except (OSError, ValueError):
            return False
        if not (d / "exit_code").exists() and not _alive(pid):
            return False
        self.procs[attempt_name] = _Proc(pid, d, None)
        return True

    def poll(self, external_id: str) -> Status:
        proc = self.procs.get(external_id)
        if proc is None and not self.adopt(external_id):
            return Status("lost")
        proc = self.procs[external_id]
        now = time.monotonic()
        if proc.kill_at is not None and now >= proc.kill_at:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.kill_at = None
        code_file = proc.dir / "exit_code"
        if proc.popen is not None:
            rc = proc.popen.poll()
            if rc is None:
                return Status("running")
        elif _alive(proc.pid):
            return Status("running")
        if code_file.exists():
            code = int(code_file.read_text())
        else:
            code = -9  # the runner itself was killed (SIGKILL of the session)
        self.procs.pop(external_id, None)
        return Status("exited", code)

    def stop(self, external_id: str, grace_s: float) -> None:
        proc = self.procs.get(external_id)
        if proc is None or proc.term_at is not None:
            return
        proc.term_at = time.monotonic()
        proc.kill_at = proc.term_at + grace_s
        _signal_group(proc.pid, signal.SIGTERM)

    def kill_all(self) -> None:
        """SIGKILL every tracked attempt (agent shutdown without drain)."""
        for proc in self.procs.values():
            _signal_group(proc.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        log.debug("process group %d already gone", pid)
