"""The node agent: host and GPU readings, energy, pushes from jobs, the /metrics endpoint, storing series."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from granary.catalog import open_catalog
from granary.monitor.agent import EnergyMeter, NodeAgent, NodeAgentConfig
from granary.monitor.gpu import FakeNvml
from granary.monitor.metrics import families, parse, render
from granary.monitor.power import PowerModel, RaplReader
from granary.monitor.series import SeriesStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_agent(tmp_path: Path | None = None, **cfg: object) -> tuple[NodeAgent, FakeNvml, Clock]:
    fake = FakeNvml.with_gpus(2, power_w=300.0)
    clock = Clock()
    series = SeriesStore(open_catalog(f"sqlite:///{tmp_path / 'c.db'}")) if tmp_path else None
    agent = NodeAgent(NodeAgentConfig(node="n1", store_every_s=0.0, **cfg), gpu=fake,  # type: ignore[arg-type]
                      gpu_status="fake", series=series, clock=clock)
    return agent, fake, clock


def by_key(samples: list) -> dict:  # type: ignore[type-arg]
    return {(n, lab): v for n, lab, v in samples}


def test_sample_has_host_and_gpu_readings() -> None:
    agent, _, _ = make_agent()
    s = by_key(agent.sample())
    assert s[("granary_node_memory_total_bytes", ())] > 0
    assert 0.0 <= s[("granary_node_cpu_utilization_ratio", ())] <= 1.0
    assert s[("granary_node_filesystem_size_bytes", (("mount", agent.host.mounts[0]),))] > 0
    assert s[("granary_node_gpus", ())] == 2.0
    assert s[("granary_gpu_power_watts", (("gpu", "1"),))] == 300.0


def test_energy_uses_the_nvml_counter_and_the_cpu_model() -> None:
    model = PowerModel(cpu_idle_w=100.0, cpu_full_w=300.0)
    meter = EnergyMeter(model, rapl=RaplReader(Path("/nonexistent")))
    fake = FakeNvml.with_gpus(2, power_w=200.0)
    meter.update(0.0, 0.5, fake.read())
    fake.advance(10.0)
    out = by_key(meter.update(10.0, 0.5, fake.read()))
    assert out[("granary_energy_node_joules_total", (("source", "nvml"),))] == pytest.approx(4000.0)
    assert out[("granary_energy_node_joules_total", (("source", "model"),))] == pytest.approx(2000.0)
    assert out[("granary_energy_node_power_watts", (("source", "nvml"),))] == pytest.approx(400.0)
    # a counter reset (driver reload) adds nothing rather than a negative amount
    fake.advance(1.0)
    fake.set(0, energy_j=0.0)  # GPU 0 reset, GPU 1 adds 200 J
    out = by_key(meter.update(11.0, 0.5, fake.read()))
    assert out[("granary_energy_node_joules_total", (("source", "nvml"),))] == pytest.approx(4200.0)


def test_rapl_counter_wraps(tmp_path: Path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("900000\n")
    rapl = RaplReader(tmp_path)
    assert rapl.available and rapl.read_j() == 0.0
    (zone / "energy_uj").write_text("100000\n")  # wrapped: +200000 uJ
    assert rapl.read_j() == pytest.approx(0.2)


def test_push_validates_names_labels_and_values() -> None:
    agent, _, _ = make_agent(push_max_series=3)
    res = agent.push({"job": "j1", "labels": {"rank": "0"},
                      "metrics": {"granary_train_step": 5, "granary_train_loss": float("nan"),
                                  "granary_gpu_up": 1, "granary_bogus": 1, "granary_train_tokens_total": -1,
                                  "granary_train_grad_norm": "high"}})
    assert res["accepted"] == 2
    assert res["rejected"] == {"granary_gpu_up": "reserved_metric", "granary_bogus": "unknown_metric",
                               "granary_train_tokens_total": "bad_value", "granary_train_grad_norm": "bad_value"}
    assert agent.push({"job": "j1", "labels": {"host": "x"}, "metrics": {"granary_train_step": 1}})["rejected"] == {
        "granary_train_step": "bad_labels"}
    agent.push({"job": "j2", "labels": {"rank": "0"}, "metrics": {"granary_train_step": 1}})
    res = agent.push({"job": "j3", "labels": {"rank": "0"}, "metrics": {"granary_train_step": 1}})
    assert res["rejected"] == {"granary_train_step": "too_many_series"}
    with pytest.raises(ValueError, match="metrics"):
        agent.push(["not", "an", "object"])


def test_pushed_series_expire_after_their_ttl() -> None:
    agent, _, clock = make_agent(push_ttl_s=60.0)
    agent.push({"job": "j1", "metrics": {"granary_curate_documents_total": 10}})
    agent.sample()
    assert len(agent.pushed_samples()) == 1
    clock.t += 61
    agent.sample()
    assert agent.pushed_samples() == []


def test_http_scrape_and_push_round_trip() -> None:
    agent, _, _ = make_agent()
    agent.sample()
    url = agent.serve(port=0)
    try:
        body = json.dumps({"job": "j1", "labels": {"rank": "3"}, "metrics": {"granary_train_step": 42}}).encode()
        req = urllib.request.Request(url + "/push", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read()) == {"accepted": 1, "rejected": {}}
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url + "/push", data=b"{oops"), timeout=30)
        assert err.value.code == 400
        with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
            samples = by_key(parse(resp.read().decode()))
        assert samples[("granary_train_step", (("job", "j1"), ("node", "n1"), ("rank", "3")))] == 42.0
        assert samples[("granary_gpu_up", (("gpu", "0"), ("node", "n1")))] == 1.0
        assert samples[("granary_node_pushes_total", (("node", "n1"),))] == 1.0
        with urllib.request.urlopen(url + "/healthz", timeout=30) as resp:
            assert json.loads(resp.read())["gpu"] == "fake"
    finally:
        agent.close()


def test_samples_are_stored_with_the_node_label(tmp_path: Path) -> None:
    agent, fake, clock = make_agent(tmp_path)
    agent.push({"job": "j1", "labels": {"rank": "0"}, "metrics": {"granary_train_loss": float("nan")}})
    agent.sample()
    clock.t += 1
    fake.set(0, temperature_c=80.0)
    agent.sample()
    assert agent.series is not None
    temps = agent.series.read("granary_gpu_temperature_celsius", match={"gpu": "0"})
    assert len(temps) == 1 and temps[0].labels == {"gpu": "0", "node": "n1"}
    assert temps[0].ts.tolist() == [1000.0, 1001.0] and temps[0].values.tolist() == [45.0, 80.0]
    loss = agent.series.read("granary_train_loss")[0]
    assert math.isnan(loss.values[0])


def test_sched_samples_read_the_scheduler_tables(tmp_path: Path) -> None:
    from granary.monitor.metrics import sched_samples
    from granary.sched.journal import register_node, request_evacuate, submit_job
    from granary.sched.model import JobSpec, NodeSpec

    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    with catalog.write() as conn:
        register_node(conn, NodeSpec(name="n1", gpus=8, cpus=4.0), 100.0)
    submit_job(catalog, JobSpec(name="a"))
    request_evacuate(catalog, "n1", "test")
    s = by_key(sched_samples(catalog, now=130.0))
    assert s[("granary_sched_jobs", (("state", "pending"),))] == 1.0
    assert s[("granary_sched_nodes", (("status", "up"),))] == 1.0
    assert s[("granary_sched_gpus", ())] == 8.0 and s[("granary_sched_gpus_used", ())] == 0.0
    assert s[("granary_sched_node_heartbeat_age_seconds", ())] == 30.0
    assert s[("granary_sched_requests", (("kind", "evacuate"), ("state", "pending")))] == 1.0
    text = render(lambda: families(sched_samples(catalog, now=130.0))).decode()
    assert 'granary_sched_jobs{state="pending"} 1.0' in text


def test_a_curation_run_pushes_its_step_totals() -> None:
    from types import SimpleNamespace

    from granary.monitor.push import push, push_curate_steps

    agent, _, _ = make_agent()
    url = agent.serve(port=0)
    try:
        steps = {"exact_dedup": SimpleNamespace(docs_in=100, docs_out=90, seconds=1.5)}
        assert push_curate_steps(steps, job="curate:web-clean", url=url)
        s = by_key(agent.pushed_samples())
        lab = (("job", "curate:web-clean"), ("step", "exact_dedup"))
        assert (s[("granary_curate_documents_total", lab)], s[("granary_curate_dropped_total", lab)]) == (100.0, 10.0)
    finally:
        agent.close()
    assert push({"granary_train_step": 1}, url=url, timeout_s=2.0) is False  # the agent is gone: no exception
