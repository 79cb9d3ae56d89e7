"""Time one scheduling pass over 10,000 pending jobs on 1,000 nodes, for every policy.

Usage: python benchmarks/sched_pass.py [--nodes 1000] [--pending 10000] [--busy 0.95] [--repeat 5] [--policies a,b]

To compare two versions of the code on the same states, run it with PYTHONPATH pointing at a worktree of each.

Anchor: a textbook pass (sort every pending job, scan every node for each) over the same state,
measured in the same run. Times are process CPU time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from granary.sched.model import JobSpec, NodeSpec, StartDecision
from granary.sched.policies import POLICIES
from granary.sched.state import SchedulerConfig, SchedulerState

SHAPES = [(1, 1)] * 14 + [(2, 1), (4, 1), (8, 1), (8, 2), (8, 4)]


def build(policy: str, *, nodes: int, pending: int, busy: float, seed: int) -> SchedulerState:
    """A cluster filled to ``busy`` with running jobs, plus ``pending`` queued jobs."""
    rng = random.Random(seed)
    st = SchedulerState(SchedulerConfig(policy=policy, heartbeat_timeout_s=None, record=False))
    for i in range(nodes):
        st.add_node(NodeSpec(name=f"n{i:04d}", gpus=8, cpus=0, labels={"rack": f"r{i // 32}"}), 0.0)
    total, t = nodes * 8, 0.0
    fill = SchedulerState(SchedulerConfig(policy="fifo", heartbeat_timeout_s=None, record=False))
    del fill
    while st.cluster.free_gpus > total * (1 - busy):
        g, r = rng.choice(SHAPES[:17])
        job = st.submit(_spec(rng, g, r), t)
        d = st.start(job, t)
        if d is None:
            st.cancel(job.id, t)
            break
        st.replica_started(job.id, d.attempt, t)
        t += 1.0
    for _ in range(pending):
        g, r = rng.choice(SHAPES)
        st.submit(_spec(rng, g, r), t)
        t += 1.0
    return st


def _spec(rng: random.Random, g: int, r: int) -> JobSpec:
    return JobSpec(name="b", tenant=f"t{rng.randrange(15)}", gpus_per_replica=g, replicas=r, cpus_per_replica=0,
                   duration_estimate_s=rng.uniform(60, 86400), priority=rng.randrange(5))


def naive_pass(st: SchedulerState, now: float) -> int:
    """Anchor: sort all pending jobs, then for each scan all nodes (first fit per replica)."""
    jobs = sorted(st.queue.jobs(), key=lambda j: (j.submit_time,))
    free = [n.free_gpus for n in st.cluster.nodes]
    started = 0
    for job in jobs:
        need, chosen = job.spec.replicas, []
        for i, f in enumerate(free):
            if f >= job.spec.gpus_per_replica:
                chosen.append(i)
                free[i] -= job.spec.gpus_per_replica
                need -= 1
                if need == 0:
                    break
        if need:
            for i in chosen:
                free[i] += job.spec.gpus_per_replica
        else:
            started += 1
    return started


def main() -> None:
    """Run and print the timings."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--pending", type=int, default=10_000)
    p.add_argument("--busy", type=float, default=0.95)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--policies", default=",".join(sorted(POLICIES)), help="comma-separated policies to time")
    a = p.parse_args()
    print(f"{a.nodes} nodes x 8 GPUs, {a.busy:.0%} busy, {a.pending} pending; median of {a.repeat} passes (CPU ms)")
    print("| policy | pass ms | started | preempted | anchor (naive) ms | anchor / granary |")
    print("|---|---|---|---|---|---|")
    for policy in a.policies.split(","):
        times, anchor = [], []
        for rep in range(a.repeat):
            st = build(policy, nodes=a.nodes, pending=a.pending, busy=a.busy, seed=rep)
            t0 = time.process_time()
            out = st.schedule(1e6)
            times.append(time.process_time() - t0)
            st2 = build(policy, nodes=a.nodes, pending=a.pending, busy=a.busy, seed=rep)
            t0 = time.process_time()
            naive_pass(st2, 1e6)
            anchor.append(time.process_time() - t0)
        started = sum(isinstance(d, StartDecision) for d in out)
        med, amed = statistics.median(times) * 1e3, statistics.median(anchor) * 1e3
        print(f"| {policy} | {med:.1f} | {started} | {len(out) - started} | {amed:.1f} | {amed / med:.1f}x |")


if __name__ == "__main__":
    main()
