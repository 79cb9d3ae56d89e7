"""Replay the Philly trace through every scheduling policy at several cluster sizes; print ratios to FIFO.

Usage: python benchmarks/sched_replay.py [TRACE] [--gpus 512,640,768] [--policies fifo,mlfq,...]
       [--failures] [--procs 2] [--json out.json]
       python benchmarks/sched_replay.py [TRACE] --elastic [--gpus 64,640] [--policies pollux,mlfq,tiresias,fifo]
       [--subsample 10] [--days 0] [--synthetic-jobs 160] [--cost-model realistic]

The anchor is FIFO measured in the same run (``--elastic``: ``mlfq``, the best fixed-size policy). CPU seconds per
replay are process CPU time (one core). ``--elastic`` replays under the realistic cost model (every cost on) the
Philly trace (at G < 640 GPUs every ``--subsample``-th job, so the load stays near the full trace's at 640) and a
synthetic Pollux-like workload (``--synthetic-jobs`` per 64 GPUs over 8 hours), then breaks down what each cost
of the realistic model costs ``mlfq`` on the Philly replay at the largest size.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT / "../shared/traces/philly_pollux_jobs.csv"
POLICIES = ("fifo", "easy", "sjf", "priority", "fairshare", "tiresias", "mlfq")


def replay(args: tuple[str, str, int, dict[str, Any]]) -> dict[str, Any]:
    """One replay (runs in a worker process)."""
    from granary.sched.simulator import simulate
    from granary.sched.trace import load_trace

    path, policy, gpus, extra = args
    trace = load_trace(path)
    t0 = time.process_time()
    m = simulate(trace, gpus=gpus, policy=policy, **extra)
    return {"policy": policy, "gpus": gpus, "cpu_s": time.process_time() - t0, **extra, **m.to_dict()}


def elastic_replay(args: tuple[str, str, int, dict[str, Any]]) -> dict[str, Any]:
    """One replay of the elastic comparison (a worker process): workload ``philly`` or ``synthetic``."""
    import numpy as np

    from granary.sched.simulator import simulate
    from granary.sched.trace import Trace, load_trace
    from granary.sched.workload import pollux_workload

    path, policy, gpus, extra = args[0], args[1], args[2], dict(args[3])
    workload = extra.pop("workload")
    sub, days, jobs = extra.pop("subsample"), extra.pop("days"), extra.pop("synthetic_jobs")
    if workload == "synthetic":
        trace = pollux_workload(jobs * gpus // 64, hours=8.0, seed=1)
    else:
        full = load_trace(path)
        end = int(np.searchsorted(full.submit_s, days * 86400.0)) if days else len(full)
        every = sub if gpus < 640 else 1
        idx = np.arange(end)[::every]
        trace = Trace(full.submit_s[idx], full.duration_s[idx], np.minimum(full.gpus[idx], gpus), full.tenant[idx],
                      full.tenants)
    t0 = time.process_time()
    m = simulate(trace, gpus=gpus, policy=policy, **extra)
    return {"workload": workload, "policy": policy, "gpus": gpus, "jobs_in": len(trace),
            "cpu_s": time.process_time() - t0, **extra, **m.to_dict()}


def _fmt_elastic(rows: list[dict[str, Any]]) -> str:
    lines = ["| workload | GPUs | jobs | policy | avg JCT h | x mlfq | p99 JCT h | makespan h | Jain | util | "
             "preempt | resizes | CPU s |", "|" + "---|" * 13]
    base = {(r["workload"], r["gpus"]): r for r in rows if r["policy"] == "mlfq"}
    for r in rows:
        b = base.get((r["workload"], r["gpus"]))
        ratio = f"{r['avg_jct_s'] / b['avg_jct_s']:.3f}" if b else "-"
        lines.append(f"| {r['workload']} | {r['gpus']} | {r['jobs_in']} | {r['policy']} | "
                     f"{r['avg_jct_s'] / 3600:.2f} | {ratio} | {r['p99_jct_s'] / 3600:.1f} | "
                     f"{r['makespan_s'] / 3600:.1f} | {r['jain']:.3f} | "
                     f"{r['gpu_util']:.3f} | {r['preemptions']} | {r['resizes']} | {r['cpu_s']:.1f} |")
    return "\n".join(lines)


def _fmt_costs(rows: list[dict[str, Any]]) -> str:
    lines = ["| mlfq with | avg JCT h | x ideal | p99 JCT h | makespan h |", "|---|---|---|---|---|"]
    ideal = rows[0]
    for r in rows:
        lines.append(f"| {r['label']} | {r['avg_jct_s'] / 3600:.3f} | {r['avg_jct_s'] / ideal['avg_jct_s']:.3f} | "
                     f"{r['p99_jct_s'] / 3600:.1f} | {r['makespan_s'] / 3600:.1f} |")
    return "\n".join(lines)


def elastic_main(a: argparse.Namespace) -> None:
    """The elastic comparison: every policy x size x workload, then the cost breakdown of ``mlfq``."""
    from granary.sched.simulator import COSTS

    sizes = [int(g) for g in a.gpus.split(",")]
    base = {"subsample": a.subsample, "days": a.days, "synthetic_jobs": a.synthetic_jobs, "cost_model": a.cost_model}
    jobs = [(a.trace, pol, g, {**base, "workload": w}) for w in ("philly", "synthetic") for g in sizes
            for pol in a.policies.split(",")]
    big = max(sizes)
    variants: list[tuple[str, dict[str, Any]]] = [("no cost (ideal)", {"cost_model": "ideal"})]
    variants += [(f"only {c}", {"cost_model": "realistic", "disabled_costs": tuple(x for x in COSTS if x != c)})
                 for c in COSTS]
    variants.append(("every cost (realistic)", {"cost_model": "realistic"}))
    cost_jobs = [(a.trace, "mlfq", big, {**base, **v, "workload": "philly"}) for _, v in variants]
    t0 = time.time()
    with ProcessPoolExecutor(a.procs) as pool:
        rows = list(pool.map(elastic_replay, jobs + cost_jobs))
    print(_fmt_elastic(rows[: len(jobs)]))
    costs = rows[len(jobs):]
    for (label, _), r in zip(variants, costs, strict=True):
        r["label"] = label
    print(f"\nwhat each cost of the realistic model costs mlfq (Philly, {big} GPUs):")
    print(_fmt_costs(costs))
    print(f"\nwall {time.time() - t0:.0f} s for {len(rows)} replays")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=str))


def _fmt_table(rows: list[dict[str, Any]]) -> str:
    head = ("| GPUs | policy | avg JCT h | xFIFO | p50 h | p95 h | p99 h | avg queue h | avg bsld | p99 bsld | "
            "makespan d | util | preempt | Jain | max large wait h | CPU s |")
    lines = [head, "|" + "---|" * 16]
    fifo = {r["gpus"]: r for r in rows if r["policy"] == "fifo"}
    for r in rows:
        base = fifo.get(r["gpus"])
        ratio = f"{r['avg_jct_s'] / base['avg_jct_s']:.3f}" if base else "-"
        lines.append(
            f"| {r['gpus']} | {r['policy']} | {r['avg_jct_s'] / 3600:.2f} | {ratio} | {r['p50_jct_s'] / 3600:.2f} | "
            f"{r['p95_jct_s'] / 3600:.1f} | {r['p99_jct_s'] / 3600:.1f} | {r['avg_queue_s'] / 3600:.2f} | "
            f"{r['avg_bsld']:.2f} | {r['p99_bsld']:.1f} | {r['makespan_s'] / 86400:.2f} | {r['gpu_util']:.3f} | "
            f"{r['preemptions']} | {r['jain']:.3f} | {r['max_queue_large_s'] / 3600:.1f} | {r['cpu_s']:.1f} |")
    return "\n".join(lines)


def _fmt_failures(rows: list[dict[str, Any]]) -> str:
    lines = ["| checkpoint every | avg JCT h | goodput | lost GPU-h | restarts (node) | restarts (job) | makespan d |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["checkpoint_interval_s"]
        label = "never" if c is None else f"{c / 60:g} min"
        lines.append(f"| {label} | {r['avg_jct_s'] / 3600:.2f} | {r['goodput']:.4f} | {r['lost_gpu_h']:.0f} | "
                     f"{r['restarts_node']} | {r['restarts_job']} | {r['makespan_s'] / 86400:.2f} |")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run the replays in parallel, print the tables."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("trace", nargs="?", default=str(DEFAULT_TRACE))
    p.add_argument("--gpus", default="512,640,768")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--failures", action="store_true", help="also run the node-failure scenarios (mlfq, 640 GPUs)")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--json", default=None, help="write all rows to this file")
    p.add_argument("--elastic", action="store_true", help="the elastic comparison (pollux vs fixed-size policies)")
    p.add_argument("--subsample", type=int, default=10, help="--elastic: keep every N-th Philly job below 640 GPUs")
    p.add_argument("--days", type=float, default=0.0, help="--elastic: replay the first N days only (0: all)")
    p.add_argument("--synthetic-jobs", type=int, default=160, help="--elastic: synthetic jobs per 64 GPUs")
    p.add_argument("--cost-model", default="realistic", choices=("realistic", "ideal"))
    a = p.parse_args()
    if a.elastic:
        if a.gpus == "512,640,768":
            a.gpus = "64,640"
        if a.policies == ",".join(POLICIES):
            a.policies = "pollux,mlfq,tiresias,fifo"
        elastic_main(a)
        return
    sizes = [int(g) for g in a.gpus.split(",")]
    jobs = [(a.trace, pol, g, {"cost_model": a.cost_model}) for g in sizes for pol in a.policies.split(",")]
    fail_jobs = [(a.trace, "mlfq", 640, {"node_mtbf_s": 30 * 86400.0, "node_repair_s": 4 * 3600.0,
                                         "job_error_rate": 0.02, "restart_overhead_s": 60.0, "seed": 1,
                                         "cost_model": a.cost_model,
                                         "checkpoint_interval_s": c})
                 for c in (None, 7200.0, 1800.0, 600.0)] if a.failures else []
    t0 = time.time()
    with ProcessPoolExecutor(a.procs) as pool:
        rows = list(pool.map(replay, jobs + fail_jobs))
    print(_fmt_table(rows[: len(jobs)]))
    if fail_jobs:
        print("\nnode failures (MTBF 30 days per node, 4 h repair, 2% of jobs fail once, 60 s restart cost):")
        print(_fmt_failures(rows[len(jobs):]))
    print(f"\nwall {time.time() - t0:.0f} s for {len(rows)} replays of {a.trace}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
