"""A labelled synthetic set of metric series for measuring the detectors: anomalies and normal noisy runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from granary.monitor import detect

KINDS = ("stall", "slowdown", "straggler", "spike", "hardware")


@dataclass(frozen=True)
class LabelledRun:
    """One run: ``data`` is 1-D (a series) or 2-D (ranks x samples); ``onset`` is None for a normal run."""

    kind: str
    onset: int | None
    data: np.ndarray


def _gaps(x: np.ndarray, rng: np.random.Generator, onset: int | None, share: float = 0.02) -> np.ndarray:
    """Blank a few samples (missing data must not trigger anything), never the onset sample itself."""
    x = x.astype(np.float64).copy()
    blank = rng.random(x.shape) < share
    if onset is not None:
        blank[..., onset] = False
    x[blank] = np.nan
    return x


def make_run(kind: str, anomalous: bool, rng: np.random.Generator, length: int = 200) -> LabelledRun:
    """One run of ``kind``, with the anomaly starting at a random sample when ``anomalous``."""
    onset = int(rng.integers(length // 2, length - 10)) if anomalous else None
    n = length
    if kind == "stall":
        inc = rng.integers(1, 4, n).astype(np.float64)  # steps per sample vary with step time jitter
        if onset is not None:
            inc[onset:] = 0
        data = _gaps(np.cumsum(inc), rng, onset)
    elif kind == "slowdown":
        rate = rng.normal(10.0, 0.4, n)
        if onset is not None:
            rate[onset:] *= rng.uniform(0.4, 0.65)
        data = _gaps(rate, rng, onset)
    elif kind == "straggler":
        ranks = int(rng.integers(4, 17))
        m = rng.normal(1.0, 0.03, (ranks, n)) * rng.uniform(0.5, 2.0)
        if onset is not None:
            m[int(rng.integers(ranks)), onset:] *= rng.uniform(1.5, 2.5)
        data = _gaps(m, rng, onset)
    elif kind == "spike":
        t = np.arange(n)
        loss = 2.0 + 3.0 * np.exp(-t / 60.0)
        loss = loss * (1 + rng.normal(0, 0.01, n))
        if onset is not None:
            loss[onset] *= rng.uniform(2.5, 6.0)
        data = _gaps(loss, rng, onset)
    elif kind == "hardware":
        xid = np.zeros(n)
        if onset is not None:
            xid[onset:] = 1
        data = _gaps(xid, rng, onset)
    else:
        raise ValueError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    return LabelledRun(kind, onset, data)


def make_dataset(*, runs_per_kind: int = 100, seed: int = 0, length: int = 200) -> list[LabelledRun]:
    """``runs_per_kind`` anomalous and as many normal runs of each kind."""
    rng = np.random.default_rng(seed)
    return [make_run(k, a, rng, length) for k in KINDS for a in (True, False) for _ in range(runs_per_kind)]


def scanners() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The detector that answers each kind, as "data -> firing per sample" (per rank for stragglers: any)."""
    straggler = detect.StragglerDetector()
    return {"stall": detect.StallDetector().scan, "slowdown": detect.RegressionDetector().scan,
            "straggler": lambda m: np.asarray(straggler.scan(m).any(axis=0)), "spike": detect.SpikeDetector().scan,
            "hardware": detect.HardwareDetector().scan}


@dataclass(frozen=True)
class Score:
    """Detection quality of one kind."""

    kind: str
    precision: float
    recall: float
    median_delay: float
    tp: int
    fp: int
    fn: int


def score(runs: list[LabelledRun]) -> dict[str, Score]:
    """Precision, recall and median delay (samples from onset to first firing) per kind.

    A run counts as a true positive when the detector first fires at or after the onset, a false positive when it
    fires on a normal run or before the onset, a false negative when it never fires on an anomalous run.
    """
    scan = scanners()
    out = {}
    for kind in KINDS:
        tp = fp = fn = 0
        delays = []
        for run in (r for r in runs if r.kind == kind):
            fired = np.nonzero(scan[kind](run.data))[0]
            first = int(fired[0]) if len(fired) else None
            if run.onset is None:
                fp += first is not None
            elif first is None:
                fn += 1
            elif first < run.onset:
                fp += 1
            else:
                tp += 1
                delays.append(first - run.onset)
        out[kind] = Score(kind, tp / max(1, tp + fp), tp / max(1, tp + fn),
                          float(np.median(delays)) if delays else float("nan"), tp, fp, fn)
    return out
