"""Detectors over metric series: each marks, per sample, whether its condition holds, with a documented method.

Every detector takes aligned arrays (timestamps and values, NaN where a sample is missing or a NaN was
reported) and returns a boolean array "firing at this sample". Gaps and NaNs never raise; a detector needs
``min_history`` samples before it may fire, so a short or empty series is quiet rather than alarming. The
methods and default thresholds are listed in docs/watch.md; the benchmark (benchmarks/watch_bench.py)
measures precision, recall and delay on a labelled synthetic set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MAD_SCALE = 1.4826  # MAD x 1.4826 estimates the standard deviation of normal noise


def trailing_median_mad(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Median and scaled MAD of the ``window`` samples before each sample (NaN where fewer than 3 exist)."""
    n = len(x)
    med = np.full(n, np.nan)
    mad = np.full(n, np.nan)
    if n <= 3:
        return med, mad
    padded = np.concatenate([np.full(window, np.nan), x.astype(np.float64)])
    win = sliding_window_view(padded, window)[:n]  # win[i] = x[i-window : i]
    counts = np.sum(np.isfinite(win), axis=1)
    ok = counts >= 3
    if ok.any():
        m = np.nanmedian(win[ok], axis=1)
        med[ok] = m
        mad[ok] = np.nanmedian(np.abs(win[ok] - m[:, None]), axis=1) * MAD_SCALE
    return med, mad


def sustained(mask: np.ndarray, k: int) -> np.ndarray:
    """True where ``mask`` held for the last ``k`` samples in a row."""
    if k <= 1:
        return mask.copy()
    run = np.zeros(len(mask), dtype=np.int64)
    count = 0
    for i, v in enumerate(mask):
        count = count + 1 if v else 0
        run[i] = count
    return run >= k


@dataclass(kw_only=True, frozen=True)
class StallDetector:
    """A job makes no progress: its step counter has not increased for too long.

    Method: the job is stalled once the counter stays flat for ``max(min_flat, factor x longest gap)`` sampling
    intervals, where the longest gap is the longest flat stretch among the last 50 changes (so checkpoint pauses
    already seen are tolerated). A counter that goes back (a restart from a checkpoint) counts as progress.
    """

    factor: float = 2.0
    min_flat: int = 3
    min_history: int = 5

    def scan(self, values: np.ndarray) -> np.ndarray:
        """Firing per sample of a step-counter series."""
        out = np.zeros(len(values), dtype=bool)
        last_val, flat, gaps = np.nan, 0, []
        for i, v in enumerate(values):
            if not np.isfinite(v):
                continue  # a gap is neither progress nor a stall
            if not np.isfinite(last_val) or v != last_val:  # a step going back is a restart: progress
                if np.isfinite(last_val):
                    gaps.append(flat + 1)
                last_val, flat = v, 0
                continue
            flat += 1
            if len(gaps) + 1 >= self.min_history:
                out[i] = flat + 1 >= max(self.min_flat, self.factor * max(gaps[-50:]))
        return out


@dataclass(kw_only=True, frozen=True)
class RegressionDetector:
    """Throughput falls against its rolling baseline (a rate series: steps/s or tokens/s).

    Method: baseline = median of the previous ``window`` samples; fires when the last ``sustain`` samples are all
    below ``(1 - drop) x baseline`` and ``threshold`` robust standard deviations under it.
    """

    window: int = 30
    drop: float = 0.25
    threshold: float = 4.0
    sustain: int = 2
    min_history: int = 10

    def scan(self, values: np.ndarray) -> np.ndarray:
        """Firing per sample of a rate series."""
        med, mad = trailing_median_mad(values, self.window)
        with np.errstate(invalid="ignore"):
            z = (med - values) / np.maximum(mad, 1e-9 + 0.01 * np.abs(med))
            low = (values < (1 - self.drop) * med) & (z > self.threshold)
        low[: self.min_history] = False
        # the baseline must not learn the slowdown: once firing, keep firing while the level stays low
        return sustained(np.nan_to_num(low, nan=0.0).astype(bool), self.sustain)


@dataclass(kw_only=True, frozen=True)
class SpikeDetector:
    """Loss or grad-norm spikes: a value far above its recent median, or a non-finite value.

    Method: robust z-score ``(x - median) / (MAD x 1.4826)`` over the previous ``window`` samples; fires when
    ``z > threshold`` and the value exceeds the median by ``rel`` (relative), or when the value is ±inf.
    """

    window: int = 30
    threshold: float = 8.0
    rel: float = 0.5
    min_history: int = 10

    def scan(self, values: np.ndarray) -> np.ndarray:
        """Firing per sample."""
        med, mad = trailing_median_mad(np.where(np.isfinite(values), values, np.nan), self.window)
        with np.errstate(invalid="ignore"):
            z = (values - med) / np.maximum(mad, 1e-12 + 1e-3 * np.abs(med))
            spike = (z > self.threshold) & (values > med + self.rel * np.abs(med))
        spike = np.nan_to_num(spike, nan=0.0).astype(bool) | np.isinf(values)
        spike[: self.min_history] = False
        return spike


@dataclass(kw_only=True, frozen=True)
class StragglerDetector:
    """One rank's step time stands out from the others' at the same moments.

    Method: per sample, the median and MAD of step time across ranks; a rank is a straggler when it is slower
    than ``ratio`` x the median and ``threshold`` robust deviations above it for ``sustain`` samples in a row.
    Needs at least 3 ranks reporting.
    """

    ratio: float = 1.3
    threshold: float = 4.0
    sustain: int = 2

    def scan(self, matrix: np.ndarray) -> np.ndarray:
        """``matrix[rank, sample]`` of step times -> firing per rank and sample."""
        if matrix.ndim != 2 or matrix.shape[0] < 3:
            return np.zeros(matrix.shape, dtype=bool)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column is a gap, not an error
            med = np.nanmedian(matrix, axis=0)
            mad = np.nanmedian(np.abs(matrix - med), axis=0) * MAD_SCALE
            z = (matrix - med) / np.maximum(mad, 1e-9 + 0.01 * np.abs(med))
            slow = (matrix > self.ratio * med) & (z > self.threshold)
        slow = np.nan_to_num(slow, nan=0.0).astype(bool)
        return np.stack([sustained(row, self.sustain) for row in slow])


@dataclass(kw_only=True, frozen=True)
class HardwareDetector:
    """A GPU reports an XID or an uncorrectable ECC error, or falls off the bus.

    Method: fires at the first sample where a cumulative error counter increased, or ``up`` reads 0 after
    having read 1 (a GPU that was never seen up is not called lost: that is missing data, not a fault).
    """

    def scan(self, counter: np.ndarray) -> np.ndarray:
        """Firing per sample of a cumulative error counter (XID or uncorrectable ECC)."""
        out = np.zeros(len(counter), dtype=bool)
        prev = np.nan
        for i, v in enumerate(counter):
            if not np.isfinite(v):
                continue
            if np.isfinite(prev) and v > prev:
                out[i:] = True
                break
            prev = v
        return out

    def scan_up(self, up: np.ndarray) -> np.ndarray:
        """Firing per sample of a ``granary_gpu_up`` series."""
        out = np.zeros(len(up), dtype=bool)
        seen_up = False
        for i, v in enumerate(up):
            if v == 1.0:
                seen_up = True
            elif v == 0.0 and seen_up:
                out[i:] = True
                break
        return out


@dataclass(kw_only=True, frozen=True)
class DiskFillDetector:
    """A filesystem will be full soon: a linear fit of usage over the last ``window`` samples crosses the size
    within ``horizon_s``, or the filesystem is already above ``full_ratio``."""

    window: int = 20
    horizon_s: float = 6 * 3600.0
    full_ratio: float = 0.95
    min_history: int = 5

    def time_to_full(self, ts: np.ndarray, used: np.ndarray, size: float) -> float:
        """Seconds until ``used`` reaches ``size`` at the recent slope (inf when not growing)."""
        ok = np.isfinite(used) & np.isfinite(ts)
        t, u = ts[ok][-self.window:], used[ok][-self.window:]
        if len(t) < self.min_history or t[-1] - t[0] <= 0:
            return float("inf")
        slope = float(np.polyfit(t - t[0], u, 1)[0])
        return float("inf") if slope <= 0 else max(0.0, (size - u[-1]) / slope)

    def scan(self, ts: np.ndarray, used: np.ndarray, size: float) -> np.ndarray:
        """Firing per sample."""
        out = np.zeros(len(used), dtype=bool)
        for i in range(len(used)):
            if np.isfinite(used[i]) and used[i] >= self.full_ratio * size:
                out[i] = True
            elif i + 1 >= self.min_history:
                out[i] = self.time_to_full(ts[: i + 1], used[: i + 1], size) < self.horizon_s
        return out


@dataclass(kw_only=True, frozen=True)
class StarvationDetector:
    """The data loader starves the GPUs: the share of step time spent waiting for data stays above ``ratio``."""

    ratio: float = 0.3
    sustain: int = 2

    def scan(self, wait_s: np.ndarray, step_s: np.ndarray) -> np.ndarray:
        """Firing per sample of aligned data-wait and step-time series."""
        with np.errstate(invalid="ignore", divide="ignore"):
            share = wait_s / step_s
        return sustained(np.nan_to_num(share > self.ratio, nan=0.0).astype(bool), self.sustain)
