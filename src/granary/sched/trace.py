"""Job traces for the simulator: the Philly CSV (as processed by Pollux) and synthetic workloads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from granary.sched.errors import TraceError

REQUIRED = ("timestamp", "duration", "num_gpus")


@dataclass(frozen=True)
class Trace:
    """Jobs sorted by submission time.

    Attributes:
        submit_s: submission times in seconds from the first submission.
        duration_s: run times (seconds) on the requested GPUs.
        gpus: GPUs requested.
        tenant: tenant index per job (into ``tenants``).
        tenants: tenant names.
    """

    submit_s: np.ndarray
    duration_s: np.ndarray
    gpus: np.ndarray
    tenant: np.ndarray
    tenants: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.submit_s)

    def slice(self, start: int, count: int) -> Trace:
        """``count`` consecutive jobs from index ``start``, times shifted to start at 0."""
        sl = slice(start, start + count)
        sub = self.submit_s[sl]
        return Trace(sub - (sub[0] if len(sub) else 0.0), self.duration_s[sl], self.gpus[sl], self.tenant[sl],
                     self.tenants)

    @property
    def gpu_seconds(self) -> float:
        """Total GPU-time of the trace."""
        return float((self.duration_s * self.gpus).sum())


def load_trace(path: str | Path) -> Trace:
    """Read a trace CSV (``timestamp`` as a date-time or epoch seconds, ``duration`` s, ``num_gpus``,
    optional ``cluster`` = tenant).

    Raises:
        TraceError: the file is missing, lacks a column, or holds a bad value (with its line number).
    """
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    path = Path(path)
    if not path.is_file():
        raise TraceError(str(path), None, "file not found")
    try:
        table = pacsv.read_csv(path)
    except Exception as exc:  # pyarrow raises several types for malformed CSV
        raise TraceError(str(path), None, f"cannot parse CSV: {exc}") from exc
    for col in REQUIRED:
        if col not in table.column_names:
            raise TraceError(str(path), 1, f"missing column {col!r} (has {table.column_names})")
    ts = table["timestamp"]
    if str(ts.type).startswith("timestamp"):
        ts = pc.cast(ts, "timestamp[s]").cast("int64")
    try:
        submit = np.asarray(ts.to_numpy(zero_copy_only=False), dtype=np.float64)
        duration = np.asarray(table["duration"].to_numpy(zero_copy_only=False), dtype=np.float64)
        gpus = np.asarray(table["num_gpus"].to_numpy(zero_copy_only=False), dtype=np.int64)
    except (ValueError, TypeError) as exc:
        raise TraceError(str(path), None, f"non-numeric value: {exc}") from exc
    _check(path, "duration", duration, lambda a: ~np.isfinite(a) | (a < 0))
    _check(path, "num_gpus", gpus, lambda a: a < 1)
    _check(path, "timestamp", submit, lambda a: ~np.isfinite(a))
    if "cluster" in table.column_names:
        names = np.asarray(table["cluster"].to_numpy(zero_copy_only=False)).astype(str)
        tenants, tenant = np.unique(names, return_inverse=True)
    else:
        tenants, tenant = np.array(["default"]), np.zeros(len(submit), dtype=np.int64)
    order = np.argsort(submit, kind="stable")
    submit = submit[order]
    return Trace(submit - submit[0] if len(submit) else submit, np.maximum(duration[order], 1.0),
                 gpus[order], tenant[order].astype(np.int64), tuple(str(t) for t in tenants))


def _check(path: Path, column: str, values: np.ndarray, bad: object) -> None:
    mask = bad(values)  # type: ignore[operator]
    if mask.any():
        row = int(np.flatnonzero(mask)[0])
        raise TraceError(str(path), row + 2, f"bad {column} value {values[row]!r}")


def synthetic_trace(num_jobs: int, *, seed: int = 0, load: float = 0.9, gpus: int = 64,
                    num_tenants: int = 4) -> Trace:
    """A Philly-like workload: heavy-tailed durations, mostly 1-GPU jobs, Poisson arrivals at ``load``."""
    if num_jobs < 1:
        raise ValueError(f"num_jobs must be >= 1, got {num_jobs}")
    rng = np.random.default_rng(seed)
    duration = np.minimum(np.exp(rng.normal(7.0, 2.0, num_jobs)), 20 * 86400.0).round() + 1
    sizes = np.array([1, 2, 4, 8, 16, 32])
    g = rng.choice(sizes, size=num_jobs, p=[0.85, 0.04, 0.04, 0.04, 0.02, 0.01])
    g = np.minimum(g, max(1, gpus // 2))
    mean_gpu_s = float((duration * g).mean())
    gap = mean_gpu_s / (gpus * load)
    submit = np.cumsum(rng.exponential(gap, num_jobs))
    submit -= submit[0]
    tenant = rng.integers(0, num_tenants, num_jobs)
    return Trace(submit, duration, g.astype(np.int64), tenant, tuple(f"t{i}" for i in range(num_tenants)))
