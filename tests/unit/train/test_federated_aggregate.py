"""Federated aggregation, pure: update checks, norm bound, robust rules against a poisoned update, FedAdam, config."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from granary.errors import TrainError
from granary.train.federated import FedConfig
from granary.train.federated import aggregate as agg
from granary.train.federated.errors import FederatedError, UpdateRejected

SHAPES = [(2, 3), (4,)]


def _arrays(rng: np.random.Generator, scale: float = 1.0) -> list[np.ndarray]:
    return [(rng.normal(0, 0.1, s) * scale).astype(np.float32) for s in SHAPES]


def test_flatten_round_trips() -> None:
    arrays = _arrays(np.random.default_rng(0))
    back = agg.unflatten(agg.flatten(arrays), SHAPES)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back, strict=True))
    with pytest.raises(FederatedError, match="does not fill"):
        agg.unflatten(np.zeros(11), SHAPES)


def test_malformed_and_poisoned_updates_are_rejected_without_their_values(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(1)
    good = _arrays(rng)
    assert agg.check_update("a", good, SHAPES).size == 10
    cases = {
        "shapes": [good[0]],
        "dtype": [good[0].astype(np.int64), good[1]],
        "non-finite": [good[0], np.array([1.0, np.nan, np.inf, 0.5], dtype=np.float32)],
        "above the bound": [g * 1e4 for g in good],
    }
    caplog.set_level(logging.DEBUG)
    for expected, arrays in cases.items():
        with pytest.raises(UpdateRejected, match=expected) as err:
            agg.check_update("mallory", arrays, SHAPES, norm_bound=1.0)
        assert err.value.site == "mallory"
        for v in agg.flatten([a.astype(np.float64) for a in arrays])[:3]:  # the message never carries values
            assert f"{v:.4f}" not in str(err.value) or v == 0
    assert caplog.records == []


def test_clip_bounds_the_norm() -> None:
    v = np.full(100, 3.0)
    assert np.linalg.norm(agg.clip(v, 2.0)) == pytest.approx(2.0)
    assert np.array_equal(agg.clip(v * 0.001, 2.0), v * 0.001)


def test_robust_rules_resist_one_poisoned_update() -> None:
    rng = np.random.default_rng(2)
    honest = [rng.normal(1.0, 0.05, 50) for _ in range(4)]
    poisoned = np.full(50, 1e6)
    ups, w = [*honest, poisoned], [1.0] * 5
    assert np.max(np.abs(agg.aggregate(ups, w, rule="mean") - 1.0)) > 1e5
    for rule in ("median", "trimmed-mean"):
        out = agg.aggregate(ups, w, rule=rule, trim_fraction=0.2)
        assert np.max(np.abs(out - 1.0)) < 0.2, rule
    weighted = agg.aggregate([np.zeros(3), np.ones(3)], [1.0, 3.0], rule="mean")
    assert np.allclose(weighted, 0.75)
    with pytest.raises(FederatedError, match="unknown aggregation"):
        agg.aggregate(honest, [1.0] * 4, rule="krum")
    with pytest.raises(FederatedError, match="leaves none"):
        agg.aggregate([np.ones(3)] * 2, [1.0, 1.0], rule="trimmed-mean", trim_fraction=0.5)


def test_server_optimizers() -> None:
    w = np.zeros(4)
    assert np.allclose(agg.server_optimizer("fedavg", 0.5).step(w, np.ones(4)), 0.5)
    adam = agg.server_optimizer("fedadam", 0.1)
    first = adam.step(w, np.full(4, 2.0))
    # m = 0.2, v = 0.99 * 1e-6 + 0.04: the step is about lr * m / sqrt(v) = 0.1
    assert np.allclose(first, 0.1 * 0.2 / (np.sqrt(0.99e-6 + 0.04) + 1e-3))
    with pytest.raises(FederatedError, match="unknown strategy"):
        agg.server_optimizer("fedsgd", 1.0)


def test_config_validation() -> None:
    with pytest.raises(FederatedError, match="only the sum"):
        FedConfig(secure="mask", aggregation="median")
    with pytest.raises(FederatedError, match="norm_bound"):
        FedConfig(dp_epsilon=1.0)
    for secure in ("mask", "ckks"):
        with pytest.raises(FederatedError, match="min_clients >= 2"):
            FedConfig(secure=secure, min_clients=1, expected_clients=1)
    with pytest.raises(FederatedError, match="fedprox"):
        FedConfig(proximal_mu=0.1)
    with pytest.raises(TrainError, match="unknown field 'rounds_'"):
        FedConfig.from_dict({"rounds_": 3})
    cfg = FedConfig.from_dict({"rounds": 2, "model": {"d_model": 16}, "secure": "ckks"})
    assert cfg.rounds == 2 and cfg.model.d_model == 16 and FedConfig.from_dict(cfg.to_dict()) == cfg


def test_client_level_dp_noise_meets_the_target() -> None:
    pytest.importorskip("opacus")
    sigma = agg.dp_noise_multiplier(4.0, 1e-5, rounds=10)
    spent = agg.dp_spent(sigma, 1e-5, rounds=10)
    assert 3.9 <= spent <= 4.0
    assert agg.dp_spent(sigma, 1e-5, rounds=5) < spent
