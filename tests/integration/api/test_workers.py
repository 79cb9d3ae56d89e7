"""`granary server --workers 2`: two real worker processes share one audit chain and one /metrics."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from granary.catalog import open_catalog
from granary.config import Settings
from granary.secure.audit import AuditLog
from tests.integration.api.server_proc import running_server

pytestmark = pytest.mark.slow
pytest.importorskip("fastapi", reason="the server needs granary[server]")

ROUTE = "/api/v1/datasets"


def _pids(metrics_dir: Path) -> set[str]:
    """Worker processes that have counted a request (prometheus_client writes a file per process)."""
    return {m.group(1) for p in metrics_dir.glob("counter_*.db") if (m := re.fullmatch(r"counter_(\d+)\.db", p.name))}


def _served(text: str) -> float:
    m = re.search(r'^granary_server_requests_total\{method="GET",route="/api/v1/datasets",status="401"\} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


def test_two_workers_share_the_audit_chain_and_metrics(tmp_path: Path) -> None:
    settings = Settings.from_env(environ={}, home=tmp_path / "g")
    catalog = open_catalog(settings.catalog_url)  # an empty catalog: the requests are refused, each audited
    log = AuditLog(catalog)
    before = log.verify().records
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    sent = 0
    with running_server(settings, auth="tokens", log=tmp_path / "server.log", workers=2,
                        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}) as url:

        def refused(_: int) -> int:  # a new connection each: the kernel hands them to either worker
            return httpx.get(f"{url}{ROUTE}", timeout=60).status_code

        deadline = time.monotonic() + 120
        with ThreadPoolExecutor(8) as pool:
            # each refusal appends an audit record from whichever worker served it, concurrently
            while len(_pids(metrics_dir)) < 2 or sent < 64:
                assert time.monotonic() < deadline, f"only workers {_pids(metrics_dir)} answered {sent} requests"
                codes = list(pool.map(refused, range(32)))
                assert codes == [401] * 32
                sent += 32
        counted = {_served(httpx.get(f"{url}/metrics", timeout=60).text) for _ in range(4)}
    assert len(_pids(metrics_dir)) >= 2
    assert counted == {float(sent)}, (counted, sent)  # whichever worker answers /metrics sums both
    report = log.verify()
    assert report.ok, report.reason
    records = log.query(action="authenticate", outcome="denied", limit=None)
    mine = [r for r in records if r.object == f"http:GET {ROUTE}"]
    assert len(mine) == sent and report.records == before + sent
    catalog.dispose()
