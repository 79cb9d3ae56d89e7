"""Remote executors driven by the controller: a real single-node Slurm, a local Ray instance."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from granary.catalog import open_catalog
from granary.sched.controller import Controller, ControllerConfig
from granary.sched.journal import get_job, submit_job
from granary.sched.model import TERMINAL, JobSpec, NodeSpec


def _run_jobs(tmp_path: Path, executor: str, options: dict[str, object], specs: list[JobSpec],
              timeout_s: float) -> list[tuple[str, str, int]]:
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    node = NodeSpec(name=executor, cpus=2, gpus=0, labels={"executor": executor})
    controller = Controller(catalog, ControllerConfig(tick_s=0.2, remote_nodes=(node,),
                                                      executor_options={executor: options}))
    ids = [submit_job(catalog, s) for s in specs]
    stop = threading.Event()
    th = threading.Thread(target=controller.run, args=(stop,), daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not all(get_job(catalog, i)[0].state in TERMINAL for i in ids):
            assert time.monotonic() < deadline, [get_job(catalog, i)[0] for i in ids]
            time.sleep(0.2)
    finally:
        stop.set()
        th.join(10)
    out = []
    for i in ids:
        row, _, attempts = get_job(catalog, i)
        out.append((row.state, attempts[-1]["external_id"], attempts[-1]["exit_code"]))
    return out


def _slurm_up() -> None:
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed (run scripts/slurm-up.sh)")
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    if res.returncode != 0 or not res.stdout.strip():
        pytest.skip(f"the Slurm controller is not answering: {res.stderr.strip()[:200]}")


@pytest.mark.slurm
def test_slurm_runs_jobs_and_reports_exit_codes(tmp_path: Path) -> None:
    _slurm_up()
    marker = tmp_path / "ran"
    specs = [JobSpec(name="ok", executor="slurm", cpus_per_replica=1, command=f"echo $GRANARY_JOB_ID > {marker}"),
             JobSpec(name="bad", executor="slurm", cpus_per_replica=1, command="exit 3")]
    (ok_state, ok_id, ok_code), (bad_state, _, bad_code) = _run_jobs(
        tmp_path, "slurm", {"work_dir": str(tmp_path / "slurm")}, specs, timeout_s=60)
    assert (ok_state, ok_code) == ("succeeded", 0) and ok_id.isdigit()
    assert (bad_state, bad_code) == ("failed", 3)
    assert marker.read_text().strip() != ""


@pytest.mark.ray
def test_ray_job_api_runs_jobs(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'granary[ray]'")
    from granary.curate.executors.ray import init_ray

    if ray.is_initialized():  # the session's shared instance has no dashboard (the Job API needs one)
        ray.shutdown()
    ctx = init_ray(num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=None)
    try:
        address = f"http://{ctx.dashboard_url}"
        specs = [JobSpec(name="ok", executor="ray", cpus_per_replica=0, command="echo hi"),
                 JobSpec(name="bad", executor="ray", cpus_per_replica=0, command="exit 2")]
        states = _run_jobs(tmp_path, "ray", {"address": address}, specs, timeout_s=90)
    finally:
        ray.shutdown()
    assert [s for s, _, _ in states] == ["succeeded", "failed"]
    assert states[1][2] == 1  # the Job API reports failure, not the exit code
