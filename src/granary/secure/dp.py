"""Differentially private statistics (Laplace / Gaussian via OpenDP) under an accounted per-dataset budget.

Each release spends (epsilon, delta) from the dataset's budget under basic sequential composition; the
spend and the ledger entry are written in one catalog transaction before the noisy value is returned, and
a release that would overspend is refused (and audited).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa

from granary.errors import MissingDependencyError
from granary.secure import tables as t
from granary.secure.errors import BudgetExhaustedError

if TYPE_CHECKING:
    from granary.secure.guard import Guard

Mechanism = Literal["laplace", "gaussian"]
DEFAULT_EPSILON = 1.0
DEFAULT_DELTA = 1e-6
_EPS_SLACK = 1e-9


@dataclass(kw_only=True, frozen=True)
class Release:
    """A private release: the noisy value(s) and what they cost."""

    query: str
    value: Any
    mechanism: Mechanism
    epsilon: float
    delta: float
    scale: float


def _opendp() -> Any:
    try:
        import opendp.prelude as dp
    except ImportError:
        raise MissingDependencyError("opendp", "dp") from None
    dp.enable_features("contrib")
    return dp


def gaussian_scale(sensitivity: float, epsilon: float, delta: float) -> float:
    """Noise scale so the Gaussian mechanism (zCDP rho = s^2/(2 sigma^2)) is (epsilon, delta)-DP."""
    log_inv = math.log(1.0 / delta)
    sqrt_rho = math.sqrt(log_inv + epsilon) - math.sqrt(log_inv)  # rho + 2 sqrt(rho ln 1/d) = eps
    return sensitivity / (math.sqrt(2.0) * sqrt_rho)


def _measurement(mechanism: Mechanism, *, vector: bool, integer: bool, scale: float) -> Any:
    dp = _opendp()
    T = int if integer else float
    atom = dp.atom_domain(T=T) if integer else dp.atom_domain(T=T, nan=False)
    if vector:
        domain = dp.vector_domain(atom)
        metric = (dp.l1_distance if mechanism == "laplace" else dp.l2_distance)(T=T)
    else:
        domain, metric = atom, dp.absolute_distance(T=T)
    make = dp.m.make_laplace if mechanism == "laplace" else dp.m.make_gaussian
    return make(domain, metric, scale=scale)


def _cost(meas: Any, mechanism: Mechanism, sensitivity: float, delta: float) -> tuple[float, float]:
    """(epsilon, delta) the measurement spends at ``sensitivity``, as computed by OpenDP."""
    if mechanism == "laplace":
        return float(meas.map(sensitivity)), 0.0
    dp = _opendp()
    approx = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(meas), delta)
    eps, d = approx.map(sensitivity)
    return float(eps), float(d)


class PrivateStats:
    """Budgeted private releases for datasets.

    Args:
        guard: the guard (authorizes ``stats`` on the dataset and audits every release and refusal).
    """

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.catalog = guard.catalog

    def set_budget(self, dataset: str, *, epsilon: float, delta: float = DEFAULT_DELTA) -> None:
        """Set a dataset's total budget (admin of the dataset)."""
        if not (epsilon > 0 and 0 <= delta < 1):
            raise ValueError(f"a budget needs epsilon > 0 and 0 <= delta < 1, got ({epsilon}, {delta})")
        self.guard.authorize("policy", dataset)
        with self.catalog.write() as conn:
            conn.execute(t.dp_budgets.delete().where(t.dp_budgets.c.dataset == dataset))
            conn.execute(t.dp_budgets.insert().values(dataset=dataset, epsilon=epsilon, delta=delta))
            self.guard.audit.append(principal=self.guard.principal.name, action="dp.budget", dataset=dataset,
                                    details={"epsilon": epsilon, "delta": delta}, conn=conn)

    def budget(self, dataset: str) -> dict[str, float]:
        """Total, spent and remaining (epsilon, delta) of a dataset."""
        with self.catalog.read() as conn:
            total_eps, total_delta, spent_eps, spent_delta = self._totals(conn, dataset)
        return {"epsilon": total_eps, "delta": total_delta, "spent_epsilon": spent_eps,
                "spent_delta": spent_delta, "remaining_epsilon": max(0.0, total_eps - spent_eps),
                "remaining_delta": max(0.0, total_delta - spent_delta)}

    def ledger(self, dataset: str) -> list[dict[str, Any]]:
        """Every release charged to a dataset, oldest first."""
        with self.catalog.read() as conn:
            rows = conn.execute(sa.select(t.dp_ledger).where(t.dp_ledger.c.dataset == dataset)
                                .order_by(t.dp_ledger.c.id)).all()
        return [r._asdict() for r in rows]

    @staticmethod
    def _totals(conn: Any, dataset: str) -> tuple[float, float, float, float]:
        row = conn.execute(sa.select(t.dp_budgets).where(t.dp_budgets.c.dataset == dataset)).first()
        total = (row.epsilon, row.delta) if row else (DEFAULT_EPSILON, DEFAULT_DELTA)
        spent = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(t.dp_ledger.c.epsilon), 0.0),
                                       sa.func.coalesce(sa.func.sum(t.dp_ledger.c.delta), 0.0))
                             .where(t.dp_ledger.c.dataset == dataset)).one()
        return float(total[0]), float(total[1]), float(spent[0]), float(spent[1])

    def _release(self, dataset: str, query: str, value: Any, *, mechanism: Mechanism, epsilon: float,
                 delta: float, sensitivity: float, vector: bool, integer: bool) -> Release:
        if mechanism not in ("laplace", "gaussian"):
            raise ValueError(f"mechanism must be laplace or gaussian, got {mechanism!r}")
        if not epsilon > 0 or (mechanism == "gaussian" and not 0 < delta < 1):
            raise ValueError("epsilon must be > 0 (and 0 < delta < 1 for the Gaussian mechanism)")
        self.guard.authorize("stats", dataset)
        if mechanism == "laplace":
            scale, delta = sensitivity / epsilon, 0.0
        else:
            scale = gaussian_scale(sensitivity, epsilon, delta)
        meas = _measurement(mechanism, vector=vector, integer=integer, scale=scale)
        eps_cost, delta_cost = _cost(meas, mechanism, sensitivity, delta)
        self._spend(dataset, query, mechanism, eps_cost, delta_cost)
        return Release(query=query, value=meas(value), mechanism=mechanism, epsilon=eps_cost, delta=delta_cost,
                       scale=scale)

    def charge(self, dataset: str, *, query: str, mechanism: str, epsilon: float, delta: float) -> None:
        """Spend (epsilon, delta) of a dataset's budget for a release made elsewhere (DP training, federated
        rounds), or raise :class:`BudgetExhaustedError` (audited) and spend nothing.

        The check and the ledger entry are one catalog transaction, so two runs cannot both spend the last of a
        budget; every charge is in :meth:`ledger`, so a budget is never spent twice unnoticed.
        """
        if not (epsilon > 0 and 0 <= delta < 1):
            raise ValueError(f"a charge needs epsilon > 0 and 0 <= delta < 1, got ({epsilon}, {delta})")
        if not 0 < len(mechanism) <= 16:
            raise ValueError(f"mechanism must be a name of 1 to 16 characters, got {mechanism!r}")
        self.guard.authorize("stats", dataset)
        self._spend(dataset, query, mechanism, epsilon, delta)

    def _spend(self, dataset: str, query: str, mechanism: str, eps_cost: float, delta_cost: float) -> None:
        principal = self.guard.principal.name
        with self.catalog.write() as conn:
            total_eps, total_delta, spent_eps, spent_delta = self._totals(conn, dataset)
            refused = None
            if spent_eps + eps_cost > total_eps + _EPS_SLACK:
                refused = BudgetExhaustedError(dataset, eps_cost, max(0.0, total_eps - spent_eps))
            elif spent_delta + delta_cost > total_delta * (1 + 1e-9):
                refused = BudgetExhaustedError(dataset, delta_cost, max(0.0, total_delta - spent_delta), what="delta")
            else:
                conn.execute(t.dp_ledger.insert().values(dataset=dataset, at=time.time(), principal=principal,
                                                         query=query, mechanism=mechanism, epsilon=eps_cost,
                                                         delta=delta_cost))
                self.guard.audit.append(principal=principal, action="dp.release", dataset=dataset, object=query,
                                        details={"mechanism": mechanism, "epsilon": eps_cost, "delta": delta_cost},
                                        conn=conn)
        if refused is not None:
            self.guard.audit.append(principal=principal, action="dp.release", dataset=dataset, object=query,
                                    outcome="denied", details={"reason": str(refused)})
            raise refused

    def count(self, dataset: str, true_count: int, *, epsilon: float, mechanism: Mechanism = "laplace",
              delta: float = DEFAULT_DELTA, query: str = "count") -> Release:
        """A private count (sensitivity 1: one data subject adds or removes one row)."""
        rel = self._release(dataset, query, int(true_count), mechanism=mechanism, epsilon=epsilon, delta=delta,
                            sensitivity=1, vector=False, integer=True)
        return replace(rel, value=max(0, int(rel.value)))  # post-processing: free, and counts are >= 0

    def sum(self, dataset: str, values: Sequence[float], *, lower: float, upper: float, epsilon: float,
            mechanism: Mechanism = "laplace", delta: float = DEFAULT_DELTA, query: str = "sum") -> Release:
        """A private sum of values clamped to [lower, upper] (sensitivity max(|lower|, |upper|))."""
        if not lower < upper:
            raise ValueError(f"lower must be < upper, got [{lower}, {upper}]")
        total = float(sum(min(max(float(v), lower), upper) for v in values))
        return self._release(dataset, query, total, mechanism=mechanism, epsilon=epsilon, delta=delta,
                             sensitivity=max(abs(lower), abs(upper)), vector=False, integer=False)

    def histogram(self, dataset: str, counts: Mapping[str, int], *, epsilon: float,
                  mechanism: Mechanism = "laplace", delta: float = DEFAULT_DELTA,
                  query: str = "histogram") -> Release:
        """Private bin counts over fixed, public bins (one subject changes one bin by one)."""
        bins = sorted(counts)
        rel = self._release(dataset, query, [int(counts[b]) for b in bins], mechanism=mechanism, epsilon=epsilon,
                            delta=delta, sensitivity=1, vector=True, integer=True)
        return replace(rel, value={b: max(0, int(v)) for b, v in zip(bins, rel.value, strict=True)})
