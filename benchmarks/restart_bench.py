"""Restart and resize latency of training jobs on CPU, with the time split into phases, in one run.

1. kill -> restart (issue 10): ``granary train RECIPE --nproc-per-node 2 --max-restarts 2`` whose rank 1 is
   killed (SIGKILL) after step 15; seconds from the kill to the first step the restarted workers finish.
2. resize (issue 16): two elastic jobs of the reference recipe under a controller (``pollux``) and a local agent,
   as in tests/integration/sched/test_elastic_resize.py: the first job shrinks 2 -> 1 when the second arrives and
   grows back 1 -> 2 when it ends; seconds from the controller's decision to the first step at the new size.

Each is run with the workers forked from the agent (the default, see granary.train.launch) and, as the anchor,
with fresh worker processes as plain torchrun starts them (``GRANARY_TRAIN_FORK=0``), alternately, in one run.
The phases come from the run folder (``startup.jsonl``, ``restarts.jsonl``, ``metrics.jsonl``), the store
(checkpoint commit) and the scheduler's rows (decision, old attempt's exit, new attempt's launch).

    python benchmarks/restart_bench.py [--reps 1] [--skip-kill] [--skip-resize]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MODEL = {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2, "context": 32}


def make_tokens(home: Path) -> None:
    import numpy as np

    from granary.config import Settings
    from granary.store import open_store

    store = open_store(Settings.from_env(home=home))
    store.create_dataset("bench-tok", kind="tokens", exist_ok=True)
    rng = np.random.default_rng(0)
    with store.transaction("bench-tok") as txn:
        txn.write_tokens((((rng.integers(0, 256) + np.arange(rng.integers(20, 80))) % 256).astype(np.uint16)
                          for _ in range(400)), shard_tokens=4000)
        txn.commit(message="bench tokens")


def write_recipe(path: Path, name: str, steps: int, every: int) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({
        "name": name, "steps": steps, "seed": 3, "run_dir": str(path.parent / name), "model": MODEL,
        "data": {"dataset": "bench-tok", "batch_size": 4, "seed": 5}, "optim": {"lr": 0.01, "warmup_steps": 2},
        "checkpoint": {"every": every}, "fault": {"step_timeout_s": 120}}))
    return path


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def steps_of(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def startup_phases(run_dir: Path, after: float, t0: float) -> dict[str, float]:
    """Seconds from ``t0`` to each phase of the first start after ``after`` (a kill or a decision)."""
    out: dict[str, float] = {}
    starts = [s for s in jsonl(run_dir / "startup.jsonl") if s.get("worker_started", 0) > after]
    if starts:
        s = starts[0]
        for key in ("agent_started", "agent_torch_imported", "agent_preloaded", "worker_started", "worker_imported"):
            if s.get(key) and (key.startswith("worker") or s[key] > after - 1):
                out[key] = s[key] - t0
    resumed = [r["time"] for r in jsonl(run_dir / "restarts.jsonl") if r["time"] > after]
    if resumed:
        out["resumed"] = resumed[0] - t0
    first = [r["time"] for r in steps_of(run_dir) if r["time"] > after]
    if first:
        out["first_step"] = first[0] - t0
    return out


# ---------------------------------------------------------------------------------------- kill -> restart
def kill_restart(home: Path, tag: str, fork: bool) -> dict[str, float]:
    run_dir = home / f"kill-{tag}"
    path = write_recipe(home / f"kill-{tag}.yaml", f"kill-{tag}", 30, 10)
    env = {**os.environ, "GRANARY_HOME": str(home), "OMP_NUM_THREADS": "1", "GRANARY_TRAIN_CHAOS": "kill:1:15",
           "GRANARY_TRAIN_FORK": "1" if fork else "0"}
    proc = subprocess.run([sys.executable, "-m", "granary.cli.main", "train", str(path), "--nproc-per-node", "2",
                           "--max-restarts", "2"], capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode:
        raise SystemExit(f"kill run failed:\n{proc.stderr[-3000:]}")
    killed = (run_dir / "chaos-0.fired").stat().st_mtime
    phases = startup_phases(run_dir, killed, killed)
    first = min(r["time"] for r in steps_of(run_dir) if r.get("attempt", 0) >= 1)
    phases["first_step"] = first - killed
    return phases


# ------------------------------------------------------------------------------------------------ resize
def resize(home: Path, work: Path, tag: str, fork: bool) -> list[dict[str, float]]:
    from granary.catalog import open_catalog
    from granary.config import Settings
    from granary.sched.agent import Agent, AgentConfig
    from granary.sched.controller import Controller, ControllerConfig
    from granary.sched.journal import get_job, submit_job
    from granary.sched.model import TERMINAL, JobSpec, NodeSpec
    from granary.sched.state import SchedulerConfig
    from granary.store import open_store

    os.environ["GRANARY_TRAIN_FORK"] = "1" if fork else "0"  # the agent's jobs inherit it
    work.mkdir(parents=True, exist_ok=True)
    catalog = open_catalog(f"sqlite:///{work / 'c.db'}")
    pollux = {"interval_s": 0.5, "min_resize_interval_s": 0.0, "min_run_s": 0.0, "restart_cost_s": 0.0,
              "hold_until_resumed": True}
    controller = Controller(catalog, ControllerConfig(tick_s=0.1, scheduler=SchedulerConfig(
        policy="pollux", policy_options=pollux)))
    agent = Agent(catalog, AgentConfig(node=NodeSpec(name="n1", gpus=2, cpus=4), work_dir=work / "a", poll_s=0.05))
    agent.register()
    env = {"GRANARY_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    big_name, small_name = f"big-{tag}", f"small-{tag}"
    big = write_recipe(work / f"{big_name}.yaml", big_name, 200, 50)
    small = write_recipe(work / f"{small_name}.yaml", small_name, 20, 10)
    elastic = dict(gpus_per_replica=1, resizable=True, min_gpus=1, max_gpus=2, grace_s=60.0, env=env)
    stop = threading.Event()
    threads = [threading.Thread(target=x.run, args=(stop,), daemon=True) for x in (controller, agent)]
    for th in threads:
        th.start()
    try:
        a = submit_job(catalog, JobSpec(name=big_name, recipe=str(big), **elastic))  # type: ignore[arg-type]
        deadline = time.monotonic() + 300
        while len(steps_of(work / big_name)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        b = submit_job(catalog, JobSpec(name=small_name, recipe=str(small), **elastic))  # type: ignore[arg-type]
        for job in (a, b):
            while get_job(catalog, job)[0].state not in TERMINAL and time.monotonic() < deadline + 600:
                time.sleep(0.2)
        row, events, attempts = get_job(catalog, a)
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    if row.state != "succeeded":
        raise SystemExit(f"resize run: job {a} is {row.state}: {events[-3:]}")
    store = open_store(Settings.from_env(home=home))
    commits = sorted(v.created_at for v in store.versions(f"{big_name}-ckpt"))
    by = {at["attempt"]: at for at in attempts}
    out = []
    for e in (e for e in events if e["reason"].startswith("resized")):
        old = int(e["correlation_id"].split(".")[1])
        if old + 1 not in by or by[old + 1]["started_at"] is None:
            continue
        decided = e["at"]
        nxt = by.get(old + 2, {}).get("started_at") or float("inf")
        before = [r["time"] for r in steps_of(work / big_name) if r["time"] < by[old]["ended_at"]]
        phases = {"old_last_step": max(before, default=decided) - decided}
        saved = [c for c in commits if decided < c <= by[old]["ended_at"]]
        if saved:
            phases["checkpoint_committed"] = saved[-1] - decided
        phases["old_exited"] = by[old]["ended_at"] - decided
        phases["new_launched"] = by[old + 1]["started_at"] - decided
        later = startup_phases(work / big_name, by[old + 1]["started_at"], decided)  # not the old attempt's steps
        if later.get("first_step", float("inf")) + decided >= nxt:
            continue  # resized again before its first step: no figure
        phases.update(later)
        phases["label"] = e["reason"].split(" (")[0]  # type: ignore[assignment]
        out.append(phases)
    return out


ORDER = ("old_last_step", "checkpoint_committed", "old_exited", "new_launched", "agent_started",
         "agent_torch_imported", "agent_preloaded", "worker_started", "worker_imported", "resumed", "first_step")


def show(title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    print(f"\n{title} (seconds after the kill / decision)")
    keys = [k for k in ORDER if any(k in r for _, r in rows)]
    print("| run | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for label, r in rows:
        cells = [f"{r[k]:.2f}" if isinstance(r.get(k), float) else "-" for k in keys]
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--skip-kill", action="store_true")
    ap.add_argument("--skip-resize", action="store_true")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    results: dict[str, dict[str, list[float]]] = {"kill": {"fork": [], "spawn": []},
                                                  "resize": {"fork": [], "spawn": []}}
    with tempfile.TemporaryDirectory(prefix="granary-restart-bench-") as tmp:
        home = Path(tmp) / "home"
        os.environ["GRANARY_HOME"] = str(home)
        make_tokens(home)
        if not args.skip_kill:
            rows = []
            for rep in range(args.reps):
                for fork in (True, False):
                    mode = "fork" if fork else "spawn"
                    r = kill_restart(home, f"{mode}{rep}", fork)
                    results["kill"][mode].append(r["first_step"])
                    rows.append((f"{mode} #{rep} (load {os.getloadavg()[0]:.1f})", r))
            show("kill -9 of rank 1 -> first step after the restart", rows)
        if not args.skip_resize:
            rows = []
            for rep in range(args.reps):
                for fork in (True, False):
                    mode = "fork" if fork else "spawn"
                    for r in resize(home, Path(tmp) / f"resize-{mode}{rep}", f"{mode}{rep}", fork):
                        results["resize"][mode].append(r["first_step"])
                        rows.append((f"{mode} #{rep} {r.pop('label')} (load {os.getloadavg()[0]:.1f})", r))
            show("controller resize: decision -> first step at the new size", rows)
    print()
    for what, target in (("kill", "kill -> first step after resume"), ("resize", "resize decision -> first step")):
        f, s = results[what]["fork"], results[what]["spawn"]
        if f and s:
            print(f"{target}: forked workers median {statistics.median(f):.2f} s, fresh worker processes (anchor) "
                  f"median {statistics.median(s):.2f} s, ratio {statistics.median(f) / statistics.median(s):.2f} "
                  f"(target < 15 s)")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
