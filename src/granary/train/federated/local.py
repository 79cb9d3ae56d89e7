"""Run a whole federation on this machine: the coordinator and every site as separate processes.

Each site process opens only its own Granary home; the coordinator opens none. This is what ``granary fed run``,
the tests and the benchmark use; across machines, run ``granary fed server`` and ``granary fed client`` instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from granary.train.federated.config import FedConfig, SiteConfig
from granary.train.federated.errors import FederatedError


@dataclass
class LocalRun:
    """The outcome of :func:`run_local`: the coordinator's result and each site's exit code and output."""

    result: dict[str, Any]
    server_code: int
    site_codes: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _spawn(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "granary.cli.main", "fed", *args]
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)


def _wait(procs: Mapping[str, subprocess.Popen[bytes]], deadline: float) -> dict[str, int]:
    codes: dict[str, int] = {}
    for name, p in procs.items():
        try:
            codes[name] = p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            codes[name] = p.wait()
    return codes


def run_local(cfg: FedConfig, sites: Sequence[SiteConfig], out_dir: str | Path, *, he_public: str | None = None,
              site_env: Mapping[str, Mapping[str, str]] | None = None, server_env: Mapping[str, str] | None = None,
              timeout_s: float = 600.0) -> LocalRun:
    """Run ``cfg`` with ``sites``; every process is killed (whole process group) at ``timeout_s``.

    ``server_env`` adds to the coordinator's environment (e.g. ``GRANARY_HOME``: the store ``cfg.publish`` goes to).
    """
    if len({s.name for s in sites}) != len(sites):
        raise FederatedError(f"site names must be unique, got {[s.name for s in sites]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.address.endswith(":0"):
        cfg = dataclasses.replace(cfg, address=free_address())
    (out / "fed.json").write_text(cfg.dumps())
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    server_args = ["server", str(out / "fed.json"), "--out", str(out)]
    if he_public:
        server_args += ["--he-context", he_public]
    procs = {"server": _spawn(server_args, {**env, **dict(server_env or {})}, out / "server.log")}
    for s in sites:
        args = ["client", s.dataset, "--site", s.name, "--server", cfg.address, "--seed", str(s.seed)]
        args += ["--home", s.home] if s.home else []
        args += ["--purpose", s.purpose] if s.purpose else []
        args += ["--he-context", s.he_context] if s.he_context else []
        procs[s.name] = _spawn(args, {**env, **dict((site_env or {}).get(s.name, {}))}, out / f"site-{s.name}.log")
    codes = _wait(procs, time.monotonic() + timeout_s)
    logs = {name: (out / ("server.log" if name == "server" else f"site-{name}.log")).read_text(errors="replace")
            for name in procs}
    result_file = out / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return LocalRun(result=result, server_code=codes.pop("server"), site_codes=codes, logs=logs)
