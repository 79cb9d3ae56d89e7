"""Energy per attempt from stored series (NVML counter, GPU power, model), reports with PUE and carbon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from granary.catalog import Catalog, open_catalog
from granary.cli.main import app
from granary.monitor.energy import EnergySettings, account_finished, energy_samples, report
from granary.monitor.power import PowerModel
from granary.monitor.series import SeriesStore
from granary.sched import tables as st
from granary.sched.journal import register_node, submit_job
from granary.sched.model import JobSpec, NodeSpec

MODEL = PowerModel(cpu_idle_w=100.0, cpu_full_w=200.0, gpu_idle_w=50.0, gpu_full_w=500.0)


def attempt(catalog: Catalog, job_id: str, attempt: int, gpus: list[int], start: float, end: float) -> None:
    with catalog.write() as conn:
        conn.execute(st.attempts.insert().values(
            job_id=job_id, attempt=attempt, replica=0, node="n1", executor="local", gpu_ids=json.dumps(gpus),
            state="exited", acked="exited", stop_requested=False, stop_reason="", grace_s=1.0, usage="{}",
            created_at=start, started_at=start, ended_at=end, exit_code=0))


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    with cat.write() as conn:
        register_node(conn, NodeSpec(name="n1", gpus=2, cpus=4.0), 0.0)
    return cat


def test_energy_from_counter_power_and_model(catalog: Catalog) -> None:
    store = SeriesStore(catalog)
    for i, ts in enumerate((100.0, 150.0, 200.0)):
        store.write([("granary_gpu_energy_joules_total", (("gpu", "0"),), 1000.0 + 300.0 * 50 * i),
                     ("granary_gpu_power_watts", (("gpu", "1"),), 200.0),
                     ("granary_energy_node_power_watts", (("source", "model"),), 160.0),
                     ("granary_train_tokens_total", (("rank", "0"),), 1e6 * i)],
                    ts=ts, extra={"node": "n1"})
    store.write([("granary_train_tokens_total", (("rank", "0"),), 2e6)], ts=200.0, extra={"node": "n1", "job": "x"})
    a = submit_job(catalog, JobSpec(name="a", tenant="lab", gpus_per_replica=2, cpus_per_replica=1.0))
    b = submit_job(catalog, JobSpec(name="b", tenant="lab", gpus_per_replica=1, cpus_per_replica=4.0))
    attempt(catalog, a, 1, [0, 1], 100.0, 200.0)
    attempt(catalog, b, 1, [], 1000.0, 1100.0)  # no series at all in its window: the model
    assert account_finished(catalog, model=MODEL) == 2
    assert account_finished(catalog, model=MODEL) == 0  # once per attempt
    rows = {r["job"]: r for r in report(catalog, by="job", settings=EnergySettings(pue=1.5, carbon_g_per_kwh=500))}
    # GPU 0: counter 30000 J; GPU 1: 200 W x 100 s; CPU: 160 W x 100 s x 1/4 of the node
    expected_a = 30000.0 + 20000.0 + 4000.0
    assert rows[a]["it_kwh"] * 3.6e6 == pytest.approx(expected_a)
    assert rows[a]["facility_kwh"] == pytest.approx(rows[a]["it_kwh"] * 1.5)
    assert rows[a]["co2_kg"] == pytest.approx(rows[a]["facility_kwh"] * 0.5)
    assert rows[a]["sources"] == "model"  # the CPU share came from the model here
    assert rows[b]["it_kwh"] * 3.6e6 == pytest.approx(200.0 * 100.0)  # full CPU model, no GPUs
    (lab,) = report(catalog, by="tenant")
    assert lab["attempts"] == 2 and lab["tenant"] == "lab"
    (sample,) = energy_samples(catalog)
    assert sample[0] == "granary_energy_tenant_joules_total" and sample[2] == pytest.approx(expected_a + 20000.0)
    with pytest.raises(ValueError, match="by must be"):
        report(catalog, by="planet")  # type: ignore[arg-type]


def test_energy_cli_report(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANARY_CATALOG_URL", str(catalog.url))
    a = submit_job(catalog, JobSpec(name="a", tenant="lab", gpus_per_replica=1))
    import time

    now = time.time()
    attempt(catalog, a, 1, [0], now - 60, now)
    result = CliRunner().invoke(app, ["energy", "--by", "tenant", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["tenant"] == "lab" and row["gpu_h"] == pytest.approx(60 / 3600)
    monkeypatch.setenv("GRANARY_PUE", "0.5")
    result = CliRunner().invoke(app, ["energy"])
    assert result.exit_code != 0 and "PUE" in result.output
