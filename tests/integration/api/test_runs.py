"""Training runs over the API: a real (tiny) training run's checkpoints, status, lineage and loss curve, through
the caller's store view, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest

from granary.catalog import open_catalog
from granary.config import Settings
from granary.secure.audit import AuditLog
from tests.integration.api.conftest import auth
from tests.integration.api.seed import Seeded, seed_run

pytest.importorskip("torch", reason="a training run needs granary[torch]")
API = "/api/v1"


@pytest.fixture(scope="module")
def run(backend: tuple[Settings, Seeded]) -> str:
    return seed_run(backend[0])


def test_list_runs(tokens: Any, backend: tuple[Settings, Seeded], run: str) -> None:
    page = tokens.get(f"{API}/runs", headers=auth(backend[1], "reader")).json()
    assert [(r["name"], r["step"], r["checkpoints"]) for r in page["items"]] == [(run, 6, 3)]
    assert tokens.get(f"{API}/runs").status_code == 401


def test_run_detail(tokens: Any, backend: tuple[Settings, Seeded], run: str) -> None:
    settings, seeded = backend
    d = tokens.get(f"{API}/runs/{run}", headers=auth(seeded, "reader")).json()
    assert (d["run"], d["status"], d["step"], d["steps"], d["world_size"]) == ("tiny", "finished", 6, 6, 1)
    assert [c["step"] for c in d["checkpoints"]] == [6, 4, 2] and d["head"] == d["checkpoints"][0]["id"]
    assert d["data"]["ref"].startswith("corpus-tok@")
    assert d["lineage"]["data"]["versions"] and d["lineage"]["segments"][0]["last_step"] == 6
    assert [r["attempt"] for r in d["restarts"]] == [0] and d["restarts"][0]["cause"] == "start"
    assert d["run_dir"] == str(settings.home / "train" / "tiny") and d["last_metrics"]["step"] == 6
    r = tokens.get(f"{API}/runs/web", headers=auth(seeded, "reader"))
    assert r.status_code == 404 and "not a training run" in r.json()["detail"]


def test_loss_curve_is_the_logged_one_and_an_audited_read(tokens: Any, backend: tuple[Settings, Seeded],
                                                         run: str) -> None:
    settings, seeded = backend
    logged = [json.loads(line) for line in (settings.home / "train" / "tiny" / "metrics.jsonl").read_text()
              .splitlines()]
    m = tokens.get(f"{API}/runs/{run}/metrics", params={"purpose": "evaluation"},
                   headers=auth(seeded, "reader")).json()
    assert m.get("steps_logged") == 6, m
    assert [(p["step"], p["loss"]) for p in m["points"]] == [(r["step"], r["loss"]) for r in logged]
    thin = tokens.get(f"{API}/runs/{run}/metrics", params={"points": 3}, headers=auth(seeded, "reader")).json()
    assert [p["step"] for p in thin["points"]] == [1, 3, 6]
    reads = [rec for rec in AuditLog(open_catalog(settings.catalog_url)).query(action="read", dataset=run)
             if rec.principal == "rita"]
    assert reads and reads[0].object.startswith(f"{run}@")


def test_runs_of_another_tenant_are_hidden(tokens: Any, backend: tuple[Settings, Seeded], run: str) -> None:
    from granary.secure.guard import Guard
    from granary.secure.policy import Policy
    from granary.secure.settings import SecureSettings

    settings, seeded = backend
    guard = Guard(open_catalog(settings.catalog_url), SecureSettings.from_env(settings.home, environ={}))
    seed_run(settings, "secret", steps=2)
    guard.set_policy("secret-ckpt", Policy(tenant="other"))
    names = [r["name"] for r in tokens.get(f"{API}/runs", headers=auth(seeded, "admin")).json()["items"]]
    assert names == [run]
    assert tokens.get(f"{API}/runs/secret-ckpt", headers=auth(seeded, "admin")).status_code == 403
