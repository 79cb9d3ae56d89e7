"""The overview's open alerts (the monitor's firing events, scoped to the caller's tenant) and the quality report
read for a declared purpose."""

from __future__ import annotations

from typing import Any

from granary.catalog import open_catalog
from granary.config import Settings
from granary.monitor.events import EventLog, Finding
from granary.secure.audit import AuditLog
from tests.integration.api.conftest import auth
from tests.integration.api.seed import Seeded

API = "/api/v1"


def test_overview_shows_firing_alerts_of_the_callers_tenant(tokens: Any, local: Any,
                                                            backend: tuple[Settings, Seeded]) -> None:
    settings, seeded = backend
    log = EventLog(open_catalog(settings.catalog_url))
    log.sync([Finding("stall", "critical", {"job": seeded.jobs[0], "rank": "0"}, "training stalled at step 40"),
              Finding("stall", "critical", {"job": seeded.other_job, "rank": "0"}, "another tenant's stall"),
              Finding("node_down", "warning", {"node": "gpu-02"}, "gpu-02 missed its heartbeats"),
              Finding("xid", "critical", {"node": "gpu-01", "gpu": "3"}, "XID 79 on gpu-01")], now=1000.0)
    log.sync([Finding("xid", "critical", {"node": "gpu-01", "gpu": "3"}, "XID 79 on gpu-01")], now=1001.0,
             scope=["xid"])  # resolves nothing else; an event that stops firing would leave the list
    log.silence({"node": "gpu-02"}, 3600, comment="maintenance")
    mine = tokens.get(f"{API}/overview", headers=auth(seeded, "reader")).json()["alerts"]
    assert [(a["summary"], a["severity"], a["silenced"]) for a in mine] == [
        ("XID 79 on gpu-01", "critical", False), ("training stalled at step 40", "critical", False),
        ("gpu-02 missed its heartbeats", "warning", True)]
    every = local.get(f"{API}/overview").json()["alerts"]
    assert len(every) == 4 and "another tenant's stall" in {a["summary"] for a in every}
    log.sync([], now=1002.0)
    assert local.get(f"{API}/overview").json()["alerts"] == []


def test_report_reads_for_the_declared_purpose(tokens: Any, backend: tuple[Settings, Seeded]) -> None:
    from granary.secure.guard import Guard
    from granary.secure.policy import Policy
    from granary.secure.settings import SecureSettings

    settings, seeded = backend
    guard = Guard(open_catalog(settings.catalog_url), SecureSettings.from_env(settings.home, environ={}))
    guard.set_policy("web-clean", Policy(purposes=frozenset({"research"})))
    h = auth(seeded, "reader")
    refused = tokens.get(f"{API}/versions/web-clean/report", params={"purpose": "marketing"}, headers=h)
    assert refused.status_code == 403 and "marketing" in refused.json()["detail"]
    ok = tokens.get(f"{API}/versions/web-clean/report", params={"purpose": "research"}, headers=h)
    assert ok.status_code == 200 and ok.json()["version"]["id"] == seeded.clean
    again = tokens.get(f"{API}/versions/web-clean/report", params={"purpose": "marketing"}, headers=h)
    assert again.status_code == 403  # a cached report is still a read decided for its purpose
    reads = [r for r in AuditLog(open_catalog(settings.catalog_url)).query(dataset="web-clean")
             if r.principal == "rita" and r.action == "read"]
    assert [r.outcome for r in reads][-3:] == ["denied", "ok", "denied"], [(r.outcome, r.details) for r in reads]
