"""Real processes on 127.0.0.1 and ephemeral ports: simulated LLM servers and gateways started from the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("aiohttp", reason="the gateway needs aiohttp (pip install 'granary[serve]')")


class Proc:
    """A child process that printed one JSON line once ready."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.stderr = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=self.stderr, env=env,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise AssertionError(f"{args} did not start (exit {self.proc.returncode}):\n{log.read_text()}")
        self.info: dict[str, Any] = json.loads(line)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stderr.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "GRANARY_HOME": str(tmp_path / "home"), "GRANARY_CATALOG_URL": f"sqlite:///{tmp_path}/c.db"}


@pytest.fixture
def procs(request: pytest.FixtureRequest) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    for p in reversed(started):
        p.stop()
        if failed:
            sys.stderr.write(f"--- {p.log.name}\n{p.output()[-4000:]}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def sim(procs: list[Proc], env: dict[str, str], tmp_path: Path) -> Callable[..., Proc]:
    """Start a simulated LLM server: sim(model="m", per_token_ms=1, ...)."""

    def start(port: int = 0, **opts: Any) -> Proc:
        args = ["-m", "granary.serve.sim", "--port", str(port)]
        for k, v in opts.items():
            flag = "--" + k.replace("_", "-")
            args += [flag] if v is True else [flag, str(v)]
        p = Proc(args, env, tmp_path / f"sim{len(procs)}.log")
        procs.append(p)
        return p

    return start


@pytest.fixture
def gateway(procs: list[Proc], env: dict[str, str], tmp_path: Path) -> Callable[..., Proc]:
    """Start `granary gateway up` on a config mapping (port 0); returns the process with its URLs."""

    def start(config: dict[str, Any], extra_env: dict[str, str] | None = None) -> Proc:
        path = tmp_path / f"gw{len(procs)}.yaml"
        path.write_text(yaml.safe_dump({"port": 0, "admin_port": 0, **config}))
        p = Proc(["-m", "granary.cli.main", "gateway", "up", "--config", str(path)], {**env, **(extra_env or {})},
                 tmp_path / f"gw{len(procs)}.log")
        procs.append(p)
        return p

    return start


def http(method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, bytes]:
    """One request; returns (status, body) for any status."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
