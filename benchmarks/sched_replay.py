"""Replay the Philly trace through every scheduling policy at several cluster sizes; print ratios to FIFO.

Usage: python benchmarks/sched_replay.py [TRACE] [--gpus 512,640,768] [--policies fifo,mlfq,...]
       [--failures] [--procs 2] [--json out.json]

The anchor is FIFO measured in the same run. CPU seconds per replay are process CPU time (one core).
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
    a = p.parse_args()
    sizes = [int(g) for g in a.gpus.split(",")]
    jobs = [(a.trace, pol, g, {}) for g in sizes for pol in a.policies.split(",")]
    fail_jobs = [(a.trace, "mlfq", 640, {"node_mtbf_s": 30 * 86400.0, "node_repair_s": 4 * 3600.0,
                                         "job_error_rate": 0.02, "restart_overhead_s": 60.0, "seed": 1,
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
