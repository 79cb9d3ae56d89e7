"""`granary server` as a real process: the CLI starts it, it answers on SQLite and PostgreSQL, and Schemathesis
fuzzes every endpoint of its OpenAPI document (no 500, no answer outside the schema)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from granary.config import Settings
from tests.integration.api.seed import Seeded, seed_models, seed_run
from tests.integration.api.server_proc import running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(backend: tuple[Settings, Seeded], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`granary server` (tokens mode) over the module's seeded catalog, with registered models when torch is
    there (so the fuzzer's model requests meet real versions, evaluations and aliases)."""
    if importlib.util.find_spec("torch") and importlib.util.find_spec("safetensors"):
        seed_models(backend[0], seed_run(backend[0]))
    with running_server(backend[0], auth="tokens", log=tmp_path_factory.mktemp("live") / "server.log") as url:
        yield url


def test_real_process_serves_api_and_dashboard(backend: tuple[Settings, Seeded], live: str) -> None:
    seeded = backend[1]
    h = {"Authorization": f"Bearer {seeded.tokens_by_role['reader']}"}
    r = httpx.get(f"{live}/api/v1/datasets/web/versions", headers=h)
    assert r.status_code == 200 and [v["id"] for v in r.json()["items"]] == seeded.raw[::-1]
    assert httpx.get(f"{live}/api/v1/datasets").status_code == 401
    page = httpx.get(f"{live}/ui/")
    assert page.status_code == 200 and '<script type="module" src="js/app.js">' in page.text
    assert "granary_server_requests_total" in httpx.get(f"{live}/metrics").text


def _fuzz(operation: Any, headers: dict[str, str], failures: list[str], max_examples: int) -> None:
    """Run Hypothesis over one operation; record the first failing case's report.

    Every check runs except "schema-valid data is accepted": a cursor is opaque and a reference's grammar
    (``name@branch``, version-id prefixes) is more than a schema says, so a well-typed but made-up one is answered
    400 with a problem body, which the schema documents.
    """
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    @hsettings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
               derandomize=True)
    @given(operation.as_strategy())
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, timeout=60, excluded_checks=[positive_data_acceptance])

    try:
        run()
    except Exception as exc:  # schemathesis raises its failure groups; collect every operation's before failing
        failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")


def test_schemathesis_fuzz(backend: tuple[Settings, Seeded], live: str) -> None:
    schemathesis = pytest.importorskip("schemathesis", reason="the fuzz test needs schemathesis (granary[dev])")
    schema = schemathesis.openapi.from_url(f"{live}/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {backend[1].tokens_by_role['admin']}"}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    paths = {op.path for op in operations}
    assert {"/models", "/models/{name}", "/models/{name}/versions", "/models/{name}/aliases/{alias}",
            "/models/{name}/events", "/models/{name}/evaluations", "/models/{name}/deployments"} <= \
        {p.removeprefix("/api/v1") for p in paths}, sorted(paths)
    for operation in operations:
        _fuzz(operation, headers, failures, max_examples=10)
    assert not failures, "\n\n".join(failures)
