"""Deployment for real: a gateway process, model servers as scheduler jobs, a broken canary rolled back under
load, servers that never become healthy, undeploy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.models.conftest import Trained, train

pytest.importorskip("aiohttp", reason="the gateway and the model server need aiohttp (pip install 'granary[serve]')")
pytestmark = pytest.mark.slow  # real processes: a gateway and model servers


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from granary.models.jobs import LocalJobs
    from granary.models.registry import Registry

    home = tmp_path / "home"
    monkeypatch.setenv("GRANARY_HOME", str(home))
    tr: Trained = train(home, "dep", steps=10)
    store = tr.store()
    reg = Registry(store)
    reg.register(tr.checkpoint, "dep")
    reg.register(tr.checkpoint, "dep")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"port": 0, "admin_port": 0, "discovery_interval_s": 0.1,
                                   "routes": [{"name": "dep", "models": ["dep"], "backends": []}]}))
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115 (closed below)
    gw = subprocess.Popen([sys.executable, "-m", "granary.cli.main", "gateway", "up", "--config", str(cfg)],
                          stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                          env={**os.environ, "GRANARY_HOME": str(home)})
    assert gw.stdout is not None
    info = json.loads(gw.stdout.readline())
    try:
        with LocalJobs(store.catalog, tmp_path / "attempts", cpus=4) as jobs:
            yield {"registry": reg, "jobs": jobs, "url": info["url"], "store": store}
            from granary.models.deploy import Deployer

            for d in Deployer(reg).deployments():
                Deployer(reg).undeploy(f"{d.name}@{d.version}")
            jobs.wait([j for d in Deployer(reg).deployments(active=False) for j in d.job_ids], timeout_s=60)
    finally:
        os.killpg(gw.pid, signal.SIGTERM)
        gw.wait(30)
        log.close()


def complete(url: str) -> int:
    req = urllib.request.Request(url + "/v1/completions", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": "dep", "prompt": "abc", "max_tokens": 2}).encode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
            assert body["model"] == "dep" and len(body["choices"][0]["tokens"]) == 2
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_serving(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while complete(url) != 200:
        assert time.monotonic() < deadline, "the gateway never routed to the deployed servers"
        time.sleep(0.1)


def test_a_broken_canary_is_rolled_back_and_the_previous_version_keeps_serving(world: dict[str, Any]) -> None:
    from granary.models.deploy import CanaryPolicy, Deployer

    dep = Deployer(world["registry"], jobs=world["jobs"], ready_timeout_s=60)
    first = dep.deploy("dep@1", replicas=2)
    assert first["outcome"] == "serving"
    wait_serving(world["url"])
    codes: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            codes.append(complete(world["url"]))

    th = threading.Thread(target=load)
    th.start()
    try:
        result = dep.deploy("dep@2", canary=CanaryPolicy(weight=0.1, watch_s=30, min_requests=3),
                            fault={"fail_rate": 1.0})
        time.sleep(1.0)
    finally:
        stop.set()
        th.join()
    assert result["outcome"] == "rolled-back" and "error rate 100.0%" in result["reason"]
    assert result["detected_after_s"] + result["rollback_s"] < 30
    assert len(codes) > 50 and sum(c != 200 for c in codes) / len(codes) < 0.05
    assert complete(world["url"]) == 200
    states = {d.version: d.state for d in dep.deployments("dep", active=False)}
    assert states == {1: "serving", 2: "rolled-back"}
    actions = [e["action"] for e in world["registry"].events("dep")]
    assert "rollback" in actions


def test_servers_that_never_become_healthy_fail_the_deploy_and_nothing_changes(world: dict[str, Any]) -> None:
    from granary.models.deploy import Deployer
    from granary.models.errors import DeployError

    dep = Deployer(world["registry"], jobs=world["jobs"], ready_timeout_s=60)
    dep.deploy("dep@1")
    wait_serving(world["url"])
    slow = Deployer(world["registry"], jobs=world["jobs"], ready_timeout_s=6)
    with pytest.raises(DeployError, match=r"0 of 1 server\(s\) healthy after 6s; the previous version keeps"):
        slow.deploy("dep@2", fault={"never_ready": True})
    assert {d.version: d.state for d in dep.deployments("dep", active=False)} == {1: "serving", 2: "failed"}
    assert complete(world["url"]) == 200
    assert dep.undeploy("dep") == ["dep@1"]
