"""The API over a seeded catalog, on SQLite and PostgreSQL: resources, paging, ETags, errors, auth, audit."""

from __future__ import annotations

from typing import Any

import pytest

from granary.catalog import open_catalog
from granary.config import Settings
from granary.secure.audit import AuditLog
from tests.integration.api.conftest import auth
from tests.integration.api.seed import Seeded

API = "/api/v1"


def test_health_and_openapi(local: Any) -> None:
    r = local.get(f"{API}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["auth"] == "local"
    doc = local.get(f"{API}/openapi.json").json()
    for path in ("/api/v1/datasets", "/api/v1/jobs/{job_id}/cancel", "/api/v1/audit/verify",
                 "/api/v1/lineage/{ref}", "/api/v1/gateway/endpoints"):
        assert path in doc["paths"], path


def test_datasets_versions_refs(local: Any, backend: tuple[Settings, Seeded]) -> None:
    seeded = backend[1]
    names = [d["name"] for d in local.get(f"{API}/datasets").json()["items"] if d["name"] != "people"]
    assert names == ["corpus-tok", "hidden", "web", "web-clean", "web-tok"]  # the local admin sees every tenant
    web = local.get(f"{API}/datasets/web").json()
    assert web["head"] == seeded.raw[1] and web["num_versions"] == 2
    assert {("branch", "main"), ("tag", "v1")} <= {(r["kind"], r["name"]) for r in web["refs"]}
    versions = local.get(f"{API}/datasets/web/versions").json()["items"]
    assert [v["id"] for v in versions] == seeded.raw[::-1] and versions[1]["num_rows"] == 40
    detail = local.get(f"{API}/versions/web@v1").json()
    assert detail["id"] == seeded.raw[0] and detail["lineage"]["command"] == "ingest"
    assert [f["name"] for f in detail["schema"]] == ["id", "text", "lang"]
    assert local.get(f"{API}/datasets/web/tags").json()[0]["version_id"] == seeded.raw[0]


def test_cursor_paging_walks_every_item_once(local: Any, backend: tuple[Settings, Seeded]) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        page = local.get(f"{API}/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([*backend[1].jobs, backend[1].other_job]) and len(set(seen)) == len(seen)
    bad = local.get(f"{API}/jobs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    assert "cursor" in bad.json()["detail"]


def test_etag_304(local: Any) -> None:
    first = local.get(f"{API}/datasets")
    tag = first.headers["etag"]
    again = local.get(f"{API}/datasets", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    assert local.get(f"{API}/datasets", headers={"If-None-Match": '"other"'}).status_code == 200


def test_problem_bodies(local: Any) -> None:
    r = local.get(f"{API}/datasets/nope")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == 404 and "nope" in body["detail"] and "Traceback" not in r.text
    assert local.get(f"{API}/jobs/nojob").json()["detail"] == "no job 'nojob'"
    invalid = local.get(f"{API}/datasets", params={"limit": 0})
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["loc"] == ["query", "limit"]


def test_lineage_back_to_raw_files(local: Any, backend: tuple[Settings, Seeded]) -> None:
    seeded = backend[1]
    graph = local.get(f"{API}/lineage/web-tok").json()
    ids = {n["id"] for n in graph["nodes"]}
    assert {seeded.tokens, seeded.clean, *seeded.raw, "file:/data/crawl-1.jsonl", "file:/data/crawl-2.jsonl"} <= ids
    rel = {(e["source"], e["target"], e["relation"]) for e in graph["edges"]}
    assert (seeded.clean, seeded.tokens, "tokenize") in rel
    assert (seeded.raw[1], seeded.clean, "curated") in rel
    assert (seeded.raw[0], seeded.raw[1], "parent") in rel


def test_diff_preview_report(local: Any, backend: tuple[Settings, Seeded]) -> None:
    seeded = backend[1]
    d = local.get(f"{API}/diff", params={"a": f"web@{seeded.raw[0]}", "b": "web", "rows": True}).json()
    assert d["rows_added"] == 20 and d["rows_removed"] == 0 and len(d["shards_added"]) >= 1
    p = local.get(f"{API}/versions/web/preview", params={"limit": 3}).json()
    assert p["columns"] == ["id", "text", "lang"] and [r["id"] for r in p["rows"]] == ["d0", "d1", "d2"]
    rep = local.get(f"{API}/versions/web-clean/report").json()
    assert rep["version"]["id"] == seeded.clean and rep["version"]["rows"] == 30


def test_loader_samples(tokens: Any, backend: tuple[Settings, Seeded]) -> None:
    seeded = backend[1]
    h = auth(seeded, "reader")
    got = tokens.get(f"{API}/versions/corpus-tok/samples", params={"seq_len": 16, "count": 2}, headers=h).json()
    assert got["kind"] == "tokens" and got["samples_per_epoch"] == 25  # 400 tokens / 16
    assert got["samples"] == [{"tokens": list(range(16))}, {"tokens": list(range(16, 32))}]
    docs = tokens.get(f"{API}/versions/web/samples", params={"count": 2}, headers=h).json()
    assert docs["kind"] == "documents" and [r["id"] for r in docs["samples"]] == ["d0", "d1"]


def test_jobs_nodes_queues_gateway_overview(local: Any, backend: tuple[Settings, Seeded]) -> None:
    seeded = backend[1]
    job = local.get(f"{API}/jobs/{seeded.jobs[0]}").json()
    assert job["state"] == "pending" and job["gpus"] == 2 and job["spec"]["name"] == "train-0"
    nodes = local.get(f"{API}/nodes").json()
    assert [(n["name"], n["gpus"], n["gpus_used"]) for n in nodes] == [("gpu-01", 8, 0), ("gpu-02", 8, 0)]
    queues = {q["tenant"]: q for q in local.get(f"{API}/queues").json()}
    assert queues["default"]["pending"] == 5 and queues["default"]["gpus_pending"] == 10
    eps = local.get(f"{API}/gateway/endpoints").json()
    assert eps[0]["model"] == "llama-8b" and eps[0]["alive"] is True
    ov = local.get(f"{API}/overview").json()
    extra = 1 if "people" in [d["name"] for d in local.get(f"{API}/datasets").json()["items"]] else 0
    assert ov["datasets"] == 5 + extra and ov["gpus_total"] == 16 and ov["jobs"]["pending"] == 6
    assert sum(d["count"] for d in ov["versions_per_day"]) == ov["versions"] >= 5


def test_tokens_mode_denies_by_default_and_audits(tokens: Any, backend: tuple[Settings, Seeded]) -> None:
    settings, seeded = backend
    assert tokens.get(f"{API}/health").status_code == 200  # health needs no token
    r = tokens.get(f"{API}/datasets")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    bad = tokens.get(f"{API}/datasets", headers={"Authorization": "Bearer gry_0123456789abcdef_" + "x" * 43})
    assert bad.status_code == 401 and "unknown API token" in bad.json()["detail"]
    log = AuditLog(open_catalog(settings.catalog_url))
    denied = log.query(action="authenticate", outcome="denied")
    assert len(denied) >= 2
    names = [d["name"] for d in tokens.get(f"{API}/datasets", headers=auth(seeded, "reader")).json()["items"]
             if d["name"] != "people"]  # made by test_forget_receipts, if it ran first
    assert names == ["corpus-tok", "web", "web-clean", "web-tok"]  # not the other tenant's dataset
    assert tokens.get(f"{API}/datasets/hidden", headers=auth(seeded, "reader")).status_code == 403
    jobs = tokens.get(f"{API}/jobs", headers=auth(seeded, "reader")).json()["items"]
    assert seeded.other_job not in {j["id"] for j in jobs} and len(jobs) == 5
    assert tokens.get(f"{API}/jobs/{seeded.other_job}", headers=auth(seeded, "admin")).status_code == 404
    assert tokens.get(f"{API}/whoami", headers=auth(seeded, "writer")).json()["name"] == "olive"


def test_cancel_as_operator_refused_as_reader(tokens: Any, backend: tuple[Settings, Seeded]) -> None:
    settings, seeded = backend
    job = seeded.jobs[1]
    refused = tokens.post(f"{API}/jobs/{job}/cancel", headers=auth(seeded, "reader"))
    assert refused.status_code == 403 and "may not cancel job" in refused.json()["detail"]
    ok = tokens.post(f"{API}/jobs/{job}/cancel", headers=auth(seeded, "writer"))
    assert ok.status_code == 202 and ok.json()["status"] == "cancel-requested"
    assert tokens.get(f"{API}/jobs/{job}", headers=auth(seeded, "reader")).json()["cancel_requested"] is True
    log = AuditLog(open_catalog(settings.catalog_url))
    assert [r.principal for r in log.query(action="job.cancel")] == ["olive"]
    assert any(r.principal == "rita" for r in log.query(action="write", outcome="denied"))


def test_audit_admin_only_and_verified(tokens: Any, backend: tuple[Settings, Seeded]) -> None:
    seeded = backend[1]
    assert tokens.get(f"{API}/audit", headers=auth(seeded, "writer")).status_code == 403
    page = tokens.get(f"{API}/audit", headers=auth(seeded, "admin"), params={"limit": 5}).json()
    seqs = [r["seq"] for r in page["items"]]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == 5 and page["next_cursor"]
    nxt = tokens.get(f"{API}/audit", headers=auth(seeded, "admin"),
                     params={"limit": 5, "cursor": page["next_cursor"]}).json()
    assert nxt["items"][0]["seq"] == seqs[-1] - 1
    v = tokens.get(f"{API}/audit/verify", headers=auth(seeded, "admin")).json()
    assert v["ok"] is True and v["records"] > 10


def test_reads_are_audited_as_the_caller(tokens: Any, backend: tuple[Settings, Seeded]) -> None:
    settings, seeded = backend
    r = tokens.get(f"{API}/versions/web/preview", headers=auth(seeded, "reader"))
    assert r.status_code == 200
    log = AuditLog(open_catalog(settings.catalog_url))
    reads = [rec for rec in log.query(action="read", dataset="web") if rec.principal == "rita"]
    assert reads and reads[-1].object == f"web@{seeded.raw[1]}"


def test_branch_and_tag_writes_idempotent(tokens: Any, backend: tuple[Settings, Seeded]) -> None:
    seeded = backend[1]
    h = auth(seeded, "writer")
    first = tokens.post(f"{API}/datasets/web/branches", json={"name": "exp", "ref": seeded.raw[0]}, headers=h)
    assert first.status_code == 201 and first.json()["version_id"] == seeded.raw[0]
    again = tokens.post(f"{API}/datasets/web/branches", json={"name": "exp", "ref": seeded.raw[0]}, headers=h)
    assert again.status_code == 200
    clash = tokens.post(f"{API}/datasets/web/branches", json={"name": "exp"}, headers=h)
    assert clash.status_code == 409
    assert tokens.post(f"{API}/datasets/web/tags", json={"name": "t"}, headers=auth(seeded, "reader")
                       ).status_code == 403


def count_queries(engine: Any, call: Any) -> int:
    """How many SQL statements ``call()`` sends through ``engine``."""
    import sqlalchemy as sa

    n = [0]

    def count(*_a: Any, **_k: Any) -> None:
        n[0] += 1

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        call()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return n[0]


@pytest.mark.parametrize("path", ["/datasets", "/versions", "/jobs", "/audit", "/datasets/web/versions"])
def test_list_query_count_does_not_grow_with_page_size(tokens: Any, backend: tuple[Settings, Seeded],
                                                       path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from granary.api import deps

    engine = tokens.app.state.granary.catalog.engine
    h = auth(backend[1], "admin")  # tokens mode: the authorisation queries are counted too
    monkeypatch.setattr(deps, "AUTH_CACHE_S", 3600.0)  # the token stays remembered between the measurements
    assert tokens.get(f"{API}/whoami", headers=h).status_code == 200

    def get(limit: int) -> None:
        r = tokens.get(f"{API}{path}", params={"limit": limit}, headers=h)
        assert r.status_code == 200 and (limit < 4 or len(r.json()["items"]) >= 2), r.text

    state = tokens.app.state.granary
    for _, view in state.views.values():  # grants, rules and policies stay remembered between the measurements
        monkeypatch.setattr(view.hooks.guard.roles, "cache_s", 3600.0)
        monkeypatch.setattr(view.hooks.guard.policies, "cache_s", 3600.0)
    get(50)  # the caller's view is then warm: opening this dataset again within AUTH_CACHE_S is not re-audited,
    # and every listed dataset's policy is remembered

    def both(limit: int) -> int:  # SQLAlchemy's statements and the precompiled ones run on raw connections
        before = state.raw.executed
        return count_queries(engine, lambda: get(limit)) + state.raw.executed - before

    counts = [both(limit) for limit in (1, 2, 4, 50)]
    assert counts[0] == counts[1] == counts[2] == counts[3] and counts[0] <= 12, counts


def test_metrics(local: Any) -> None:
    local.get(f"{API}/health")
    text = local.get("/metrics").text
    assert 'granary_server_requests_total{method="GET",route="/api/v1/health",status="200"}' in text
    assert "granary_server_request_duration_seconds_bucket" in text


def test_forget_receipts(tokens: Any, backend: tuple[Settings, Seeded]) -> None:
    import pyarrow as pa

    from granary.secure.forget import forget
    from granary.secure.hooks import SecureHooks
    from granary.store import Store

    settings, seeded = backend
    hooks = SecureHooks.from_settings(settings, environ={})
    store = Store(settings, hooks=hooks, catalog=hooks.guard.catalog)
    store.create_dataset("people", exist_ok=True)
    store.commit_table("people", pa.table({"id": ["p1", "p2"], "text": ["write to ana@example.org", "no pii here"]}))
    forget(store, hooks.guard, "people", "ana@example.org", by="value")
    assert tokens.get(f"{API}/forget", headers=auth(seeded, "reader")).status_code == 403
    got = tokens.get(f"{API}/forget", params={"dataset": "people"}, headers=auth(seeded, "admin")).json()
    assert len(got) == 1 and got[0]["rows_removed"] == 1 and got[0]["signature_ok"] is True
    assert "ana@example.org" not in str(got)


def test_revoked_token_stops_working(tokens: Any, backend: tuple[Settings, Seeded],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from granary.api import deps
    from granary.secure.guard import Guard
    from granary.secure.settings import SecureSettings

    settings, _seeded = backend
    guard = Guard(open_catalog(settings.catalog_url), SecureSettings.from_env(settings.home, environ={}))
    issued = guard.issue_token("rita", scopes=("read",))
    h = {"Authorization": f"Bearer {issued.secret}"}
    assert tokens.get(f"{API}/whoami", headers=h).status_code == 200
    guard.revoke_token(issued.token_id)
    monkeypatch.setattr(deps, "AUTH_CACHE_S", 0.0)  # the cache would keep it valid for up to 10 s
    r = tokens.get(f"{API}/whoami", headers=h)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_bound_view_keeps_token_scopes_and_client_origin(tokens: Any, backend: tuple[Settings, Seeded]) -> None:
    """The store view of a request is ``Store.bind`` to the cached principal: a writer's read-only token stays
    read-only on the cached path too, and the view's read records name the client."""
    from granary.secure.guard import Guard
    from granary.secure.settings import SecureSettings

    settings, _seeded = backend
    guard = Guard(open_catalog(settings.catalog_url), SecureSettings.from_env(settings.home, environ={}))
    h = {"Authorization": f"Bearer {guard.issue_token('olive', scopes=('read',)).secret}"}
    for _ in range(2):  # the first request authenticates, the second uses the remembered principal
        r = tokens.post(f"{API}/datasets/web/tags", json={"name": "scoped"}, headers=h)
        assert r.status_code == 403, r.text
    assert tokens.get(f"{API}/versions/web/preview", headers=h).status_code == 200
    log = AuditLog(open_catalog(settings.catalog_url))
    reads = [rec for rec in log.query(action="read", dataset="web") if rec.principal == "olive"]
    assert reads and reads[-1].origin == "http:testclient"


def test_a_caller_opening_a_dataset_again_is_audited_once_per_period(tokens: Any, backend: tuple[Settings, Seeded]
                                                                     ) -> None:
    """A caller's requests share its store view for deps.AUTH_CACHE_S, so its read gate audits a repeated grant
    once (not one write per GET); another caller is audited on its own."""
    seeded = backend[1]

    def opens(who: str) -> int:
        got = tokens.get(f"{API}/audit", headers=auth(seeded, "admin"),
                         params={"principal": who, "dataset": "web", "action": "list", "limit": 500}).json()
        return len(got["items"])

    tokens.app.state.granary.views.clear()  # no view of an earlier test's requests
    before = opens("rita"), opens("olive")
    for _ in range(3):
        assert tokens.get(f"{API}/datasets/web", headers=auth(seeded, "reader")).status_code == 200
    assert tokens.get(f"{API}/datasets/web", headers=auth(seeded, "writer")).status_code == 200
    assert (opens("rita"), opens("olive")) == (before[0] + 1, before[1] + 1)
