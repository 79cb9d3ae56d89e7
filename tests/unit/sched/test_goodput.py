"""The goodput model: step-time shape, efficiency, batch choice, noise scale, and the online fit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from granary.sched.goodput import GoodputModel, ThroughputParams, efficiency, noise_scale, step_time

TRUE = ThroughputParams(a_grad=0.03, b_grad=0.004, a_local=0.02, b_local=0.003, a_node=0.12, b_node=0.02, gamma=2.0)


def test_step_time_matches_the_formula() -> None:
    p = TRUE
    assert float(step_time(p, 1, 1, 32)) == pytest.approx(0.03 + 0.004 * 32)  # no sync on one GPU
    grad, sync = 0.03 + 0.004 * 16, 0.02 + 0.003 * 2
    assert float(step_time(p, 4, 1, 16)) == pytest.approx((grad**2 + sync**2) ** 0.5)
    sync_n = 0.12 + 0.02 * 14
    assert float(step_time(p, 16, 2, 16)) == pytest.approx((grad**2 + sync_n**2) ** 0.5)


@given(k=st.integers(1, 64), m=st.floats(1, 512), extra=st.floats(0.1, 64))
def test_more_samples_per_gpu_never_run_faster(k: int, m: float, extra: float) -> None:
    n = -(-k // 8)
    assert step_time(TRUE, k, n, m + extra) >= step_time(TRUE, k, n, m)
    assert step_time(TRUE, k, n + 1, m) >= step_time(TRUE, k, n, m) or k <= 1  # crossing nodes never helps


@given(b=st.floats(1, 1e5), extra=st.floats(1, 1e5), phi=st.floats(0, 1e5))
def test_efficiency_falls_with_batch_and_is_one_at_the_base(b: float, extra: float, phi: float) -> None:
    assert float(efficiency(b, b, phi)) == pytest.approx(1.0)
    assert efficiency(b + extra, b, phi) <= 1.0
    assert efficiency(b + extra, 32, phi) <= efficiency(b, 32, phi)


def test_best_batch_grows_with_gpus_and_noise_scale() -> None:
    low = GoodputModel(params=TRUE, base_batch=64, min_batch=64, max_batch=4096, noise_scale=100.0)
    high = GoodputModel(params=TRUE, base_batch=64, min_batch=64, max_batch=4096, noise_scale=20_000.0)
    b1, _ = high.best_batch(1, 1)
    b8, g8 = high.best_batch(8, 1)
    assert b8 > b1
    assert low.best_batch(8, 1)[0] < b8  # noisy gradients (large phi) make large batches pay
    assert g8 == pytest.approx(float(high.goodput(8, 1, b8)))
    grid = np.arange(64, 4097)
    assert g8 >= float(high.goodput(8, 1, grid).max()) * 0.98  # the grid search finds (close to) the optimum
    s = high.speedups([1, 2, 4, 8, 16], 8, 1)
    assert s[0] >= 1.0 and all(np.diff(s) > 0)


def test_noise_scale_recovers_a_known_value() -> None:
    g2, tr = 4.0, 2000.0  # |G|^2 and tr(Sigma): B_noise = 500
    small, big = 8, 256
    assert noise_scale(g2 + tr / small, g2 + tr / big, small, big) == pytest.approx(500.0)
    with pytest.raises(ValueError, match="batch_small < batch_big"):
        noise_scale(1.0, 1.0, 8, 8)


def test_fit_recovers_known_parameters_from_reported_steps() -> None:
    model = GoodputModel(base_batch=64, min_batch=64, max_batch=4096)  # starts from the default prior
    rng = np.random.default_rng(0)
    for k, n in [(1, 1), (2, 1), (4, 1), (8, 1), (16, 2), (32, 4)]:
        for m in (8, 32, 128):
            t = float(step_time(TRUE, k, n, m)) * (1 + rng.normal(0, 0.002))
            model.report(k, n, m, t)
    fitted = model.fit()
    for k, n, m in [(1, 1, 64), (8, 1, 16), (24, 3, 64), (64, 8, 32)]:
        assert float(step_time(fitted, k, n, m)) == pytest.approx(float(step_time(TRUE, k, n, m)), rel=0.03)
    assert fitted.b_grad == pytest.approx(TRUE.b_grad, rel=0.1)
    assert fitted.a_node + 14 * fitted.b_node == pytest.approx(TRUE.a_node + 14 * TRUE.b_node, rel=0.1)


def test_fit_without_multi_node_data_keeps_the_prior_there() -> None:
    prior = ThroughputParams()
    model = GoodputModel(params=prior)
    for m in (8, 32, 128):
        model.report(1, 1, m, float(step_time(TRUE, 1, 1, m)))
    fitted = model.fit()
    assert fitted.b_grad == pytest.approx(TRUE.b_grad, rel=0.05)
    assert fitted.a_node == pytest.approx(prior.a_node, rel=0.2)


@pytest.mark.parametrize("bad", [dict(gpus=0), dict(step_time_s=0.0), dict(local_batch=-1.0)])
def test_bad_reports_are_refused(bad: dict[str, float]) -> None:
    args = dict(gpus=1, nodes=1, local_batch=8.0, step_time_s=0.1) | bad
    with pytest.raises(ValueError, match="bad step report"):
        GoodputModel().report(**args)  # type: ignore[arg-type]
