"""Detectors: values on hand-made series, gaps and NaNs never crash or alarm, and the quality targets on a
small labelled synthetic set (the benchmark runs the full set)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from granary.monitor import detect
from granary.monitor.synthetic import KINDS, make_dataset, score


def test_stall_fires_after_the_flat_stretch_and_restarts_count_as_progress() -> None:
    steps = np.array([1, 2, 3, 4, 5, 6, 6, 6, 6, 3, 4, 5], dtype=float)
    fired = detect.StallDetector().scan(steps)
    assert fired.tolist() == [False] * 7 + [True, True, False, False, False]


def test_stall_tolerates_pauses_it_has_seen() -> None:
    steps = np.array([1, 2, 2, 2, 3, 4, 5, 6, 7, 7, 7, 8], dtype=float)  # a 3-interval checkpoint pause, twice
    assert not detect.StallDetector().scan(steps).any()


def test_regression_needs_two_low_samples() -> None:
    rate = np.r_[np.full(30, 10.0) + np.tile([0.1, -0.1], 15), [6.0, 6.0, 10.0]]
    assert detect.RegressionDetector().scan(rate).tolist()[-3:] == [False, True, False]


def test_spike_and_infinite_values() -> None:
    loss = np.r_[np.linspace(3, 2, 30) * (1 + np.tile([0.005, -0.005], 15)), [9.0, 2.0, np.inf, np.nan]]
    assert detect.SpikeDetector().scan(loss).tolist()[-4:] == [True, False, True, False]


def test_straggler_marks_the_slow_rank_only() -> None:
    m = np.full((4, 6), 1.0) + np.arange(4)[:, None] * 0.01
    m[2, 3:] = 2.0
    fired = detect.StragglerDetector().scan(m)
    assert fired[2].tolist() == [False, False, False, False, True, True] and not fired[[0, 1, 3]].any()
    assert not detect.StragglerDetector().scan(m[:2]).any()  # two ranks: no majority to compare against


def test_hardware_counters_and_a_gpu_never_seen_up() -> None:
    hw = detect.HardwareDetector()
    assert hw.scan(np.array([0, np.nan, 0, 1, 1])).tolist() == [False, False, False, True, True]
    assert not hw.scan(np.array([np.nan, 5, 5])).any()  # a counter that starts high is history, not news
    assert hw.scan_up(np.array([1, np.nan, 0])).tolist() == [False, False, True]
    assert not hw.scan_up(np.array([np.nan, 0, 0])).any()  # missing data alone never drains a node


def test_disk_fill_forecast() -> None:
    d = detect.DiskFillDetector(horizon_s=100.0)
    ts = np.arange(10.0)
    used = 100.0 + ts * 10.0  # 10 B/s, 900 B left at the end: 90 s to full
    assert d.time_to_full(ts, used, 1090.0) == pytest.approx(90.0)
    assert d.scan(ts, used, 1090.0)[-1]
    assert not d.scan(ts, np.full(10, 100.0), 1090.0).any()
    assert d.scan(ts, np.full(10, 1050.0), 1090.0).all()  # above 95 % is firing whatever the trend


def test_starvation() -> None:
    fired = detect.StarvationDetector().scan(np.array([0.1, 0.5, 0.5, np.nan]), np.array([1.0, 1.0, 1.0, 1.0]))
    assert fired.tolist() == [False, False, True, False]


@settings(deadline=None, max_examples=40)
@given(arrays(np.float64, st.integers(0, 60), elements=st.one_of(st.just(np.nan),
                                                                    st.floats(-1e6, 1e6))))
def test_detectors_never_crash_on_gaps_and_nans(x: np.ndarray) -> None:
    for scan in (detect.StallDetector().scan, detect.RegressionDetector().scan, detect.SpikeDetector().scan,
                 detect.HardwareDetector().scan, detect.HardwareDetector().scan_up):
        out = scan(x)
        assert out.shape == x.shape and out.dtype == bool
    assert detect.StragglerDetector().scan(np.stack([x, x, x])).shape == (3, len(x))
    assert not detect.StallDetector().scan(np.full(len(x), np.nan)).any()


def test_quality_targets_on_a_labelled_set() -> None:
    scores = score(make_dataset(runs_per_kind=30, seed=7))
    for kind in KINDS:
        s = scores[kind]
        assert s.precision >= 0.95 and s.recall >= 0.95 and s.median_delay <= 2, s
