"""End to end with real job processes and the real controller: a hung job is restarted from its checkpoint, a
GPU with an XID (fake NVML: no GPU here) gets its node evacuated and its job requeued, nothing run twice."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from granary.catalog import Catalog, open_catalog
from granary.monitor.agent import NodeAgent, NodeAgentConfig
from granary.monitor.events import EventLog
from granary.monitor.gpu import FakeNvml
from granary.monitor.series import SeriesStore
from granary.monitor.watcher import Watcher, WatcherConfig
from granary.sched.agent import Agent, AgentConfig
from granary.sched.controller import Controller, ControllerConfig
from granary.sched.journal import get_job, list_nodes, list_requests, submit_job
from granary.sched.model import JobSpec, NodeSpec
from granary.sched.state import SchedulerConfig

JOB = Path(__file__).with_name("job_train.py")
pytestmark = pytest.mark.slow


def wait_for(cond: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.1)


@contextmanager
def cluster(tmp_path: Path, nodes: tuple[str, ...]) -> Iterator[tuple[Catalog, dict[str, FakeNvml], dict[str, str]]]:
    """Controller, scheduler agents, monitor agents (fake NVML) and the watcher, each on a thread."""
    catalog = open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    stop = threading.Event()
    fakes, urls, threads, monitors = {}, {}, [], []
    controller = Controller(catalog, ControllerConfig(tick_s=0.1, scheduler=SchedulerConfig(
        heartbeat_timeout_s=30.0, backoff_base_s=0.2)))
    threads.append(threading.Thread(target=controller.run, args=(stop,), daemon=True))
    for name in nodes:
        spec = NodeSpec(name=name, gpus=2, cpus=4.0)
        agent = Agent(catalog, AgentConfig(node=spec, work_dir=tmp_path / name, poll_s=0.1, heartbeat_s=0.5))
        threads.append(threading.Thread(target=agent.run, args=(stop,), daemon=True))
        fakes[name] = FakeNvml.with_gpus(2)
        mon = NodeAgent(NodeAgentConfig(node=name, interval_s=0.25, store_every_s=0.0), gpu=fakes[name],
                        series=SeriesStore(catalog))
        urls[name] = mon.serve(port=0)
        monitors.append(mon)
        threads.append(threading.Thread(target=mon.run, args=(stop,), daemon=True))
    watcher = Watcher(catalog, WatcherConfig(interval_s=0.5, lookback_s=120.0))
    threads.append(threading.Thread(target=watcher.run, args=(stop,), daemon=True))
    for th in threads:
        th.start()
    try:
        yield catalog, fakes, urls
    finally:
        stop.set()
        for th in threads:
            th.join(30)
        for mon in monitors:
            mon.close()


def _attempts(catalog: Catalog, job_id: str) -> list[dict]:  # type: ignore[type-arg]
    return get_job(catalog, job_id)[2]


def test_hung_job_is_restarted_from_its_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    with cluster(tmp_path, ("n1",)) as (catalog, _, urls):
        job_id = submit_job(catalog, JobSpec(
            name="train", gpus_per_replica=1, checkpoint_dir=str(ckpt), command=f"{sys.executable} {JOB} 40",
            max_restarts=1, grace_s=1.0, env={"HANG_AT": "15", "GRANARY_MONITOR_URL": urls["n1"]}))
        wait_for(lambda: (ckpt / "step_15" / "_COMPLETE").exists(), 60, "the job to reach step 15")
        hung_at = time.time()
        wait_for(lambda: list_requests(catalog), 60, "the watcher to ask for a restart")
        detected_in = list_requests(catalog)[0]["requested_at"] - hung_at
        wait_for(lambda: get_job(catalog, job_id)[0].state in ("succeeded", "failed"), 90, "the job to finish")
    row, events, attempts = get_job(catalog, job_id)
    assert row.state == "succeeded", (row.reason, events)
    assert detected_in < 60
    print(f"hang detected and restart requested {detected_in:.1f} s after the job's last step")
    (req,) = list_requests(catalog)
    assert (req["kind"], req["target"], req["state"], req["requested_by"]) == ("restart", job_id, "done", "watch")
    assert [a["attempt"] for a in attempts] == [1, 2] and attempts[1]["resumed_step"] == 15
    assert (ckpt / "finished_attempt_2").read_text() == "15" and not (ckpt / "finished_attempt_1").exists()
    assert row.job_restarts == 1
    stall = [e for e in EventLog(catalog).list() if e["detector"] == "stall"]
    assert stall and stall[-1]["labels"] == {"job": job_id} and "restart requested" in stall[-1]["action"]
    lines = [tuple(int(x) for x in ln.split()) for ln in (ckpt / "steps.log").read_text().splitlines()]
    assert [s for a, s in lines] == list(range(1, 41))  # each step done once, in order, across both attempts


def test_xid_drains_the_node_and_requeues_its_job_once(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    with cluster(tmp_path, ("n1", "n2")) as (catalog, fakes, urls):
        job_id = submit_job(catalog, JobSpec(
            name="train", gpus_per_replica=2, checkpoint_dir=str(ckpt), command=f"{sys.executable} {JOB} 60",
            grace_s=1.0, env={"GRANARY_MONITOR_URL": urls["n1"]}))
        wait_for(lambda: (ckpt / "step_10" / "_COMPLETE").exists(), 60, "the job to reach step 10")
        first = _attempts(catalog, job_id)[0]
        fakes[first["node"]].inject_xid(1, 79)
        injected = time.time()
        wait_for(lambda: len(_attempts(catalog, job_id)) == 2, 60, "the job to be requeued")
        print(f"XID to requeued attempt: {_attempts(catalog, job_id)[1]['created_at'] - injected:.1f} s")
        wait_for(lambda: get_job(catalog, job_id)[0].state in ("succeeded", "failed"), 90, "the job to finish")
    row, events, attempts = get_job(catalog, job_id)
    assert row.state == "succeeded", (row.reason, events)
    other = "n2" if first["node"] == "n1" else "n1"
    assert [a["node"] for a in attempts] == [first["node"], other]
    assert attempts[0]["stop_reason"].startswith(f"evacuated from {first['node']}")
    assert row.node_restarts == 1 and row.job_restarts == 0
    (req,) = list_requests(catalog)
    assert (req["kind"], req["target"], req["state"]) == ("evacuate", first["node"], "done")
    nodes = {n["name"]: n for n in list_nodes(catalog)}
    assert nodes[first["node"]]["status"] == "draining" and nodes[first["node"]]["drain_requested"]
    assert not (ckpt / "finished_attempt_1").exists() and (ckpt / "finished_attempt_2").exists()
    lines = [tuple(int(x) for x in ln.split()) for ln in (ckpt / "steps.log").read_text().splitlines()]
    resumed = attempts[1]["resumed_step"]
    assert [s for a, s in lines if a == 2] == list(range(resumed + 1, 61))
    assert max(s for a, s in lines if a == 1) <= resumed + 1  # attempt 1 stopped; at most its step in flight
    xid = [e for e in EventLog(catalog).list() if e["detector"] == "xid"]
    assert xid and xid[-1]["labels"] == {"node": first["node"], "gpu": "1"}
