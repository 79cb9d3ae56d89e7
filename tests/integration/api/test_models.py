"""The model registry over the API: models, versions, aliases, evaluations, deployments and events of real
registered versions (a tiny training run), through the caller's store view, on SQLite and PostgreSQL; moving an
alias is a write on the model (403 for a reader), refused with 409 where the data policy forbids `production`
unless an override reason is given, which is audited."""

from __future__ import annotations

import json
from typing import Any

import pytest

from granary.catalog import open_catalog
from granary.config import Settings
from granary.secure.audit import AuditLog
from granary.secure.hooks import SecureHooks
from granary.secure.policy import Policy
from tests.integration.api.conftest import auth
from tests.integration.api.seed import Seeded, seed_models, seed_run

pytest.importorskip("torch", reason="a model needs granary[models]")
pytest.importorskip("safetensors", reason="the registry writes safetensors (pip install 'granary[models]')")
API = "/api/v1"


@pytest.fixture(scope="module")
def models(backend: tuple[Settings, Seeded]) -> str:
    settings = backend[0]
    seed_models(settings, seed_run(settings))
    return "tiny"


def test_list_models(tokens: Any, backend: tuple[Settings, Seeded], models: str) -> None:
    page = tokens.get(f"{API}/models", headers=auth(backend[1], "reader")).json()
    assert [(m["name"], m["versions"], m["latest"], m["latest_method"], m["aliases"]) for m in page["items"]] == \
        [("tiny", 3, 3, "int8-dynamic", {"staging": 2})]
    assert page["next_cursor"] is None
    assert tokens.get(f"{API}/models").status_code == 401


def test_model_detail_versions_evaluations(tokens: Any, backend: tuple[Settings, Seeded], models: str) -> None:
    seeded = backend[1]
    d = tokens.get(f"{API}/models/tiny", headers=auth(seeded, "reader")).json()
    assert [(v["version"], v["method"], v["parent"], v["aliases"]) for v in d["versions"]] == \
        [(3, "int8-dynamic", 1, []), (2, "registered", None, ["staging"]), (1, "registered", None, [])]
    assert d["versions"][0]["size_bytes"] < d["versions"][1]["size_bytes"]
    assert [(a["alias"], a["version"]) for a in d["aliases"]] == [("staging", 2)]
    assert d["lineage"]["version"] == 3 and d["lineage"]["checkpoint"]["dataset"] == "tiny-ckpt"
    # the walk reaches the raw crawl through the tokens and the curated data
    assert {"corpus-tok", "web-clean", "web"} <= set(d["lineage"]["datasets"])
    assert d["policy"]["purposes"] is None and d["policy"]["production_allowed"] is True
    by_version = {e["version"]: e for e in d["evaluations"]}
    assert sorted(by_version) == [1, 2, 3]
    assert by_version[1]["perplexity"] == by_version[2]["perplexity"] > 1.0  # the same weights
    assert by_version[1]["tokens"] == by_version[2]["tokens"] > 0
    assert d["deployments"] == []
    page = tokens.get(f"{API}/models/tiny/versions", params={"limit": 2}, headers=auth(seeded, "reader")).json()
    rest = tokens.get(f"{API}/models/tiny/versions", params={"cursor": page["next_cursor"]},
                      headers=auth(seeded, "reader")).json()
    assert [v["version"] for v in page["items"]] + [v["version"] for v in rest["items"]] == [3, 2, 1]
    assert rest["next_cursor"] is None
    evals = tokens.get(f"{API}/models/tiny/evaluations", headers=auth(seeded, "reader")).json()
    assert evals == d["evaluations"]
    assert tokens.get(f"{API}/models/tiny/deployments", headers=auth(seeded, "reader")).json() == []


def test_unknown_model_and_bad_name(tokens: Any, backend: tuple[Settings, Seeded], models: str) -> None:
    r = tokens.get(f"{API}/models/nosuch", headers=auth(backend[1], "reader"))
    assert r.status_code == 404 and "model nosuch does not exist" in r.json()["detail"]
    assert r.headers["content-type"].startswith("application/problem+json")
    r = tokens.get(f"{API}/models/Bad%20Name/aliases", headers=auth(backend[1], "reader"))
    assert r.status_code == 400 and "invalid model name" in r.json()["detail"]


def test_alias_move_is_a_write(tokens: Any, backend: tuple[Settings, Seeded], models: str) -> None:
    settings, seeded = backend
    r = tokens.post(f"{API}/models/tiny/aliases/staging", json={"version": 1}, headers=auth(seeded, "reader"))
    assert r.status_code == 403, r.text
    assert "rita" in r.json()["detail"]
    denied = [e for e in AuditLog(open_catalog(settings.catalog_url)).query(principal="rita")
              if e.outcome == "denied" and e.dataset == "model.tiny"]
    assert denied, "the refusal is audited"
    r = tokens.post(f"{API}/models/tiny/aliases/staging", json={"version": 1}, headers=auth(seeded, "writer"))
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "tiny", "alias": "staging", "version": 1, "previous": 2, "override": False}
    aliases = tokens.get(f"{API}/models/tiny/aliases", headers=auth(seeded, "reader")).json()
    assert [(a["alias"], a["version"]) for a in aliases] == [("staging", 1)]
    moves = tokens.get(f"{API}/models/tiny/events", params={"action": "alias"}, headers=auth(seeded, "reader")).json()
    last = moves["items"][-1]
    assert (last["actor"], last["version"], last["details"]["from"], last["override"]) == ("olive", 1, 2, False)
    r = tokens.post(f"{API}/models/tiny/aliases/staging", json={"version": 9}, headers=auth(seeded, "writer"))
    assert r.status_code == 404 and "tiny@9" in r.json()["detail"]
    r = tokens.post(f"{API}/models/tiny/aliases/Prod!", json={"version": 1}, headers=auth(seeded, "writer"))
    assert r.status_code == 400 and "invalid alias" in r.json()["detail"]


def test_production_refused_by_data_policy_unless_overridden(tokens: Any, backend: tuple[Settings, Seeded],
                                                             models: str) -> None:
    """The raw crawl becomes research-only: `production` is refused (409, the reason and what to do), then
    moved with an override reason, which the model's trail and the audit log both record."""
    settings, seeded = backend
    guard = SecureHooks.from_settings(settings, environ={}).guard
    guard.set_policy("web", Policy(purposes=frozenset({"research"}), licenses=frozenset({"CC-BY-4.0"})))
    try:
        d = tokens.get(f"{API}/models/tiny", headers=auth(seeded, "reader")).json()
        assert d["policy"]["purposes"] == ["research"] and d["policy"]["production_allowed"] is False
        assert "CC-BY-4.0" in d["policy"]["licenses"]
        r = tokens.post(f"{API}/models/tiny/aliases/production", json={"version": 2}, headers=auth(seeded, "writer"))
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["title"] == "promotion refused" and "tiny@2 may not become production" in body["detail"]
        assert "['research']" in body["detail"] and "override" in body["hint"]
        assert tokens.get(f"{API}/models/tiny/aliases", headers=auth(seeded, "reader")).json()[0]["alias"] != \
            "production"
        r = tokens.post(f"{API}/models/tiny/aliases/production",
                        json={"version": 2, "override": "legal approved ticket LEGAL-42"},
                        headers=auth(seeded, "writer"))
        assert r.status_code == 200 and r.json()["override"] is True, r.text
        trail = tokens.get(f"{API}/models/tiny/events", headers=auth(seeded, "reader")).json()["items"]
        actions = [(e["action"], e["version"], e["override"]) for e in trail[-3:]]
        assert actions == [("alias-refused", 2, False), ("override", 2, True), ("alias", 2, True)]
        assert trail[-2]["details"]["reason"] == "legal approved ticket LEGAL-42"
        audited = [e for e in AuditLog(open_catalog(settings.catalog_url)).query(principal="olive")
                   if e.action == "model.override"]
        assert audited and json.dumps(audited[-1].details).count("LEGAL-42") == 1
    finally:
        guard.set_policy("web", Policy())


def test_models_of_another_tenant_are_hidden(tokens: Any, backend: tuple[Settings, Seeded], models: str) -> None:
    from granary.models.registry import Registry
    from granary.store import Store

    settings, seeded = backend
    hooks = SecureHooks.from_settings(settings, environ={})
    Registry(Store(settings, hooks=hooks, catalog=hooks.guard.catalog)).register("tiny-ckpt", "secret")
    hooks.guard.set_policy("model.secret", Policy(tenant="other"))
    page = tokens.get(f"{API}/models", headers=auth(seeded, "admin")).json()
    assert [m["name"] for m in page["items"]] == ["tiny"]
    # paged one by one: the hidden model's page is empty but says where to go on
    first = tokens.get(f"{API}/models", params={"limit": 1}, headers=auth(seeded, "admin")).json()
    assert first["items"] == [] and first["next_cursor"]
    second = tokens.get(f"{API}/models", params={"limit": 1, "cursor": first["next_cursor"]},
                        headers=auth(seeded, "admin")).json()
    assert [m["name"] for m in second["items"]] == ["tiny"]
    r = tokens.get(f"{API}/models/secret", headers=auth(seeded, "admin"))
    assert r.status_code == 403 and r.json()["title"] == "forbidden"
