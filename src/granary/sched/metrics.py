"""Scheduling metrics of a simulated (or real) run: JCT percentiles, slowdown, utilization, fairness."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BOUND_S = 10.0  # bounded slowdown ignores the run time of jobs shorter than this


@dataclass(frozen=True)
class RunMetrics:
    """Summary of a run (times in seconds).

    Attributes:
        jobs: jobs that finished.
        unfinished: jobs that never finished (starved or lost).
        avg_jct_s, p50_jct_s, p95_jct_s, p99_jct_s: job completion time (finish - submit).
        avg_queue_s, p99_queue_s: time not running (JCT minus time holding GPUs).
        avg_bsld, p99_bsld: bounded slowdown ``max(1, JCT / max(duration, 10 s))``.
        makespan_s: last finish minus first submission.
        gpu_util: GPU-seconds held by jobs over GPUs x makespan.
        preemptions: jobs stopped to make room for others.
        jain: Jain's index over tenants of their mean ``duration / JCT`` (1 = equal treatment).
        max_queue_large_s: longest wait of a job with >= 32 GPUs (starvation check).
        goodput: useful GPU-seconds over GPU-seconds held (1 - recomputation and restart overhead).
        lost_gpu_h: GPU-hours held but not useful (recomputed after failures, restart overhead).
        restarts_node, restarts_job: restarts by cause.
        resizes: running jobs moved to another GPU count (elastic policies).
    """

    jobs: int
    unfinished: int
    avg_jct_s: float
    p50_jct_s: float
    p95_jct_s: float
    p99_jct_s: float
    avg_queue_s: float
    p99_queue_s: float
    avg_bsld: float
    p99_bsld: float
    makespan_s: float
    gpu_util: float
    preemptions: int
    jain: float
    max_queue_large_s: float
    goodput: float
    lost_gpu_h: float
    restarts_node: int
    restarts_job: int
    resizes: int = 0

    def to_dict(self) -> dict[str, float | int]:
        """The metrics as a JSON-able dict."""
        return asdict(self)


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


def jain_index(values: np.ndarray) -> float:
    """Jain's fairness index ``(sum x)^2 / (n * sum x^2)``; 1 when all values are equal."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or not np.any(values):
        return 1.0
    return float(values.sum() ** 2 / (len(values) * (values**2).sum()))


def compute_metrics(*, submit: np.ndarray, finish: np.ndarray, duration: np.ndarray, gpus: np.ndarray,
                    held_s: np.ndarray, tenant: np.ndarray, total_gpus: int, preemptions: int,
                    restarts_node: int = 0, restarts_job: int = 0, held_gpu_s: np.ndarray | None = None,
                    resizes: int = 0) -> RunMetrics:
    """Compute :class:`RunMetrics` from per-job arrays (``finish`` is NaN for unfinished jobs; ``held_gpu_s``,
    GPU-seconds held per job, defaults to ``held_s * gpus`` - pass it when jobs changed size)."""
    done = np.isfinite(finish)
    jct = (finish - submit)[done]
    dur, g, held = duration[done], gpus[done], held_s[done]
    queue = np.maximum(jct - held, 0.0)
    bsld = np.maximum(1.0, jct / np.maximum(dur, BOUND_S))
    makespan = float(finish[done].max() - submit.min()) if done.any() else 0.0
    held_total = float((held_s * gpus).sum()) if held_gpu_s is None else float(np.sum(held_gpu_s))
    useful = float((dur * g).sum())
    speed = dur / np.maximum(jct, 1e-9)
    tenants = tenant[done]
    per_tenant = np.array([speed[tenants == t].mean() for t in np.unique(tenants)])
    large = g >= 32
    return RunMetrics(
        jobs=int(done.sum()), unfinished=int((~done).sum()),
        avg_jct_s=float(jct.mean()) if len(jct) else 0.0, p50_jct_s=_pct(jct, 50), p95_jct_s=_pct(jct, 95),
        p99_jct_s=_pct(jct, 99), avg_queue_s=float(queue.mean()) if len(queue) else 0.0,
        p99_queue_s=_pct(queue, 99), avg_bsld=float(bsld.mean()) if len(bsld) else 0.0, p99_bsld=_pct(bsld, 99),
        makespan_s=makespan, gpu_util=held_total / max(total_gpus * makespan, 1e-9), preemptions=preemptions,
        jain=jain_index(per_tenant), max_queue_large_s=float(queue[large].max()) if large.any() else 0.0,
        goodput=useful / max(held_total, 1e-9), lost_gpu_h=max(0.0, held_total - useful) / 3600.0,
        restarts_node=restarts_node, restarts_job=restarts_job, resizes=resizes,
    )
