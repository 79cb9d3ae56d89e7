"""Private statistics: the noise follows the calibrated distribution and the budget is accounted and enforced."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from granary.catalog import Catalog
from granary.secure.dp import PrivateStats, _measurement, gaussian_scale
from granary.secure.errors import BudgetExhaustedError
from granary.secure.guard import Guard
from granary.secure.settings import SecureSettings


def _stats(tmp_path: Path, catalog: Catalog) -> PrivateStats:
    return PrivateStats(Guard(catalog, SecureSettings.from_env(tmp_path, environ={})))


def test_laplace_noise_distribution() -> None:
    scale = 4.0
    meas = _measurement("laplace", vector=True, integer=False, scale=scale)
    draws = np.array(meas([0.0] * 20000))
    assert abs(draws.mean()) < 0.15
    assert abs(draws.var() - 2 * scale**2) / (2 * scale**2) < 0.08
    # Laplace: P(|X| > t) = exp(-t / b)
    assert abs((np.abs(draws) > scale).mean() - math.exp(-1)) < 0.02


def test_gaussian_noise_distribution_and_calibration() -> None:
    sigma = gaussian_scale(1.0, 1.0, 1e-6)
    meas = _measurement("gaussian", vector=True, integer=False, scale=sigma)
    draws = np.array(meas([0.0] * 12000))  # tolerances below are > 4 standard errors
    assert abs(draws.std() - sigma) / sigma < 0.03
    assert abs((np.abs(draws) < sigma).mean() - 0.6827) < 0.02
    rho = 1 / (2 * sigma**2)
    assert rho + 2 * math.sqrt(rho * math.log(1e6)) == pytest.approx(1.0)


def test_budget_is_accounted_and_refused_once_spent(tmp_path: Path, catalog: Catalog) -> None:
    stats = _stats(tmp_path, catalog)
    stats.set_budget("web", epsilon=1.0, delta=1e-6)
    r = stats.count("web", 1000, epsilon=0.4)
    assert isinstance(r.value, int) and r.epsilon == pytest.approx(0.4) and r.scale == pytest.approx(2.5)
    h = stats.histogram("web", {"en": 500, "fr": 20}, epsilon=0.3)
    assert set(h.value) == {"en", "fr"}
    g = stats.count("web", 1000, epsilon=0.2, mechanism="gaussian", delta=5e-7)
    assert 0 < g.epsilon <= 0.2 and g.delta == pytest.approx(5e-7)
    left = stats.budget("web")
    assert left["spent_epsilon"] == pytest.approx(0.7 + g.epsilon)
    with pytest.raises(BudgetExhaustedError) as err:
        stats.count("web", 1000, epsilon=0.5)
    assert err.value.requested == pytest.approx(0.5)
    with pytest.raises(BudgetExhaustedError, match="delta"):
        stats.count("web", 1000, epsilon=0.01, mechanism="gaussian", delta=9e-7)
    assert len(stats.ledger("web")) == 3  # refusals spend nothing
    audit = stats.guard.audit
    assert [r.outcome for r in audit.query(action="dp.release")] == ["ok", "ok", "ok", "denied", "denied"]
    s = stats.sum("other", [1.0, 5.0, 100.0], lower=0.0, upper=10.0, epsilon=0.5)
    assert s.scale == pytest.approx(20.0)


def test_bad_release_arguments(tmp_path: Path, catalog: Catalog) -> None:
    stats = _stats(tmp_path, catalog)
    with pytest.raises(ValueError):
        stats.count("web", 1, epsilon=0)
    with pytest.raises(ValueError):
        stats.sum("web", [1.0], lower=5, upper=1, epsilon=1)
    with pytest.raises(ValueError):
        stats.set_budget("web", epsilon=-1)
