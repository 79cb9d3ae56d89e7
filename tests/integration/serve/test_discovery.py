"""Admin tokens through the security layer, and serving jobs of the scheduler registering their endpoints."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.serve.conftest import Proc, http

pytestmark = pytest.mark.slow  # real processes: gateways and simulated servers


def test_admin_api_takes_granary_tokens(sim: Callable[..., Proc], gateway: Callable[..., Proc],
                                        env: dict[str, str]) -> None:
    from granary.catalog import open_catalog
    from granary.secure.audit import AuditLog
    from granary.secure.guard import local_principal
    from granary.secure.rbac import RoleBook
    from granary.secure.settings import SecureSettings
    from granary.secure.tokens import PrincipalRegistry

    catalog = open_catalog(env["GRANARY_CATALOG_URL"])
    reg = PrincipalRegistry(catalog)
    me = local_principal(SecureSettings.from_env(Path(env["GRANARY_HOME"])))
    roles = RoleBook(catalog)
    for name, role in (("ops", "admin"), ("viewer", "reader")):
        reg.add(name)
        roles.grant(me, name, role, tenant="default")
    ops = reg.issue("ops", scopes=("read", "write", "admin")).secret
    viewer = reg.issue("viewer", scopes=("read",)).secret
    s = sim(model="m")
    gw = gateway({"routes": [{"name": "chat", "models": ["m"], "backends": []}]}, extra_env={"GRANARY_AUTH": "tokens"})
    admin = gw.info["admin_url"]

    def call(method: str, path: str, token: str | None, body: object = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return http(method, admin + path, body, headers=headers)[0]

    add = {"route": "chat", "name": "s0", "url": s.info["url"]}
    assert call("GET", "/admin/backends", None) == 401
    assert call("GET", "/admin/backends", "gry_0000000000000000_" + "x" * 43) == 401
    assert call("GET", "/admin/backends", viewer) == 200
    assert call("POST", "/admin/backends", viewer, add) == 403  # a reader may look, not change
    assert call("POST", "/admin/backends", ops, add) == 200
    assert call("POST", "/admin/backends", ops, {**add, "weight": 0}) == 400
    assert http("POST", f"{gw.info['url']}/v1/completions", {"model": "m", "prompt": "x"})[0] == 200
    audit = AuditLog(catalog)
    changes = audit.query(principal="ops", action="gateway")
    assert [r.object for r in changes] == ["gateway:backend.add:chat/s0"]
    denied = audit.query(principal="viewer", outcome="denied")
    assert [r.action for r in denied] == ["gateway"]


def test_a_serving_job_registers_itself_and_leaves_with_the_job(gateway: Callable[..., Proc], env: dict[str, str],
                                                                tmp_path: Path) -> None:
    from granary.catalog import open_catalog
    from granary.sched.agent import Agent, AgentConfig
    from granary.sched.controller import Controller, ControllerConfig
    from granary.sched.journal import get_job, request_cancel, submit_job
    from granary.sched.model import TERMINAL, JobSpec, NodeSpec
    from granary.serve.endpoints import EndpointBook

    catalog = open_catalog(env["GRANARY_CATALOG_URL"])
    gw = gateway({"discovery_interval_s": 0.2, "routes": [{"name": "chat", "models": ["m"], "backends": [],
                                                           "health": {"interval_s": 0.2}}]})
    url = gw.info["url"]
    controller = Controller(catalog, ControllerConfig(tick_s=0.05))
    agent = Agent(catalog, AgentConfig(node=NodeSpec(name="n1", gpus=1, cpus=4), work_dir=tmp_path / "att",
                                       poll_s=0.05))
    agent.register()
    cmd = [sys.executable, "-m", "granary.cli.main", "gateway", "endpoint", "--model", "m", "--drain-s", "0.2",
           "--", sys.executable, "-m", "granary.serve.sim", "--port", "{port}", "--model", "m"]
    job = submit_job(catalog, JobSpec(name="serve-m", command=tuple(cmd), gpus_per_replica=1, grace_s=5,
                                      env={k: env[k] for k in ("GRANARY_HOME", "GRANARY_CATALOG_URL")}))
    stop = threading.Event()
    threads = [threading.Thread(target=x.run, args=(stop,), daemon=True) for x in (controller, agent)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while http("POST", f"{url}/v1/completions", {"model": "m", "prompt": "x"})[0] != 200:
            assert time.monotonic() < deadline, get_job(catalog, job)[0]
            time.sleep(0.2)
        eps = EndpointBook(catalog).live()
        assert [(e.model, e.job_id) for e in eps] == [("m", job)] and eps[0].name == f"{job}-0"
        request_cancel(catalog, job)
        deadline = time.monotonic() + 30
        while True:  # the job ends; the gateway drops its endpoint
            status, body = http("POST", f"{url}/v1/completions", {"model": "m", "prompt": "x"})
            if status == 503 and get_job(catalog, job)[0].state in TERMINAL:
                break
            assert time.monotonic() < deadline, (status, body)
            time.sleep(0.2)
        assert json.loads(body)["error"]["code"] == "no_backend"
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert EndpointBook(catalog).live() == []
    assert os.path.exists(tmp_path / "att")
