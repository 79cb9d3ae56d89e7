"""Fitting a tabular step over shards: which partial statistics each step needs, and its fitted values.

A fit is a generator: it yields requests (``moments``, ``counts``, ``sketch``/``window`` for exact
quantiles), receives the shards' partials merged, and returns the same fitted statistics the step
computes in a single run (the ``fitted:`` mapping it accepts), so the apply round reuses the step's own SQL.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from granary.curate.errors import PipelineSpecError
from granary.curate.tabular import partial as P
from granary.curate.tabular.base import TabularStep

Fit = Generator[dict[str, Any], dict[str, Any], dict[str, Any]]


def shardable(step: TabularStep) -> str | None:
    """Why ``step`` cannot run shard by shard (None: it can)."""
    name, opt = step.name, step.__dict__
    if name in ("cast", "filter", "outliers", "scale", "bucket", "encode"):
        return None
    if name == "impute":
        return None if opt["strategy"] not in ("ffill", "bfill", "interpolate") else \
            f"impute {opt['strategy']} fills along keys across the whole table"
    if name == "validate":
        return "a unique rule needs every row at once" if any(r.rule == "unique" for r in opt["rules"]) else None
    if name == "dedup":
        return None if opt["keep"] != "fail" else "dedup keep=fail compares whole rows across the table"
    if name == "join":
        return None if opt["how"] in ("inner", "left") else f"a {opt['how']} join adds rows of the other side"
    return f"{name} works on the whole table"


def check_shardable(steps: tuple[TabularStep, ...], where: str) -> None:
    """Raise a clear error for a step that has no sharded form."""
    for s in steps:
        why = shardable(s)
        if why:
            raise PipelineSpecError(f"{where}.{s.display}", f"step {s.name} cannot run shard by shard: {why}",
                                    hint="run this pipeline without --workers/--executor ray (one process)")


def needs_fit(step: TabularStep) -> bool:
    """Whether the step computes statistics over its input (and none were given as ``fitted``)."""
    opt = step.__dict__
    if opt.get("fitted"):
        return False
    if step.name == "impute":
        return bool(opt["strategy"] in ("mean", "median", "mode"))
    if step.name == "scale":
        return bool(opt["method"] != "log")
    if step.name == "encode":
        return bool(opt["method"] != "hash")
    return step.name in ("outliers", "bucket", "dedup")


def fit(step: TabularStep) -> Fit:
    """The fit of a step (see the module docstring)."""
    opt = step.__dict__
    if step.name == "impute":
        return _impute(opt["strategy"])
    if step.name == "outliers":
        k = opt["k"] if opt["k"] is not None else (1.5 if opt["method"] == "iqr" else 3.0)
        return _outliers(opt["method"], k)
    if step.name == "scale":
        return _scale(opt["method"])
    if step.name == "bucket":
        return _bucket(opt["method"], opt["buckets"])
    if step.name == "encode":
        return _encode(opt["max_categories"])
    raise AssertionError(f"no fit for {step.name}")


def quantiles(qs: list[float], centers: dict[str, float] | None = None) -> Fit:
    """Exact ``quantile_cont`` of every target column (of ``|x - center|`` where a centre is given)."""
    centers = centers or {}
    got = yield {"sketch": centers}
    plan: dict[str, list[tuple[int, int, float]]] = {}
    asks: list[tuple[str, float | None, float, float]] = []
    where: dict[tuple[str, int], int] = {}
    for c, sketches in got["sketch"].items():
        n = sum(s.n for s in sketches)
        plan[c] = [P.quantile_ranks(n, q) for q in qs] if n else []
        wanted = sorted({r for a, b, _ in plan[c] for r in (a, b)})
        for r, (lo, hi) in zip(wanted, P.brackets(sketches, wanted), strict=True):
            where[(c, r)] = len(asks)
            asks.append((c, centers.get(c), lo, hi))
    got = yield {"window": asks}
    out: dict[str, Any] = {}
    for c, ranks in plan.items():
        if not ranks:
            out[c] = [None] * len(qs)
            continue
        value = {r: P.order_statistic(r, got["window"][where[(c, r)]]) for a, b, _ in ranks for r in (a, b)}
        out[c] = [P.interpolate(value[a], value[b], frac) for a, b, frac in ranks]
    return out


def _impute(strategy: str) -> Fit:
    if strategy == "mean":
        got = yield {"moments": True}
        return {c: m.mean if m.n else None for c, m in got["moments"].items()}
    if strategy == "median":
        qs = yield from quantiles([0.5])
        return {c: v[0] for c, v in qs.items()}
    got = yield {"counts": True}
    return {c: (P.most_frequent(n, 1) or [None])[0] for c, n in got["counts"].items()}


def _outliers(method: str, k: float) -> Fit:
    out: dict[str, Any] = {}
    if method == "iqr":
        qs = yield from quantiles([0.25, 0.75])
        for c, (a, b) in qs.items():
            out[c] = [None, None] if a is None else [a - k * (b - a), b + k * (b - a)]
        return out
    if method == "zscore":
        got = yield {"moments": True}
        pairs = {c: (m.mean, m.std) if m.n else (None, None) for c, m in got["moments"].items()}
    else:
        med = yield from quantiles([0.5])
        centers = {c: v[0] for c, v in med.items() if v[0] is not None}
        mad = yield from quantiles([0.5], centers)
        pairs = {c: (med[c][0], 1.4826 * mad[c][0] if c in centers else None) for c in med}
    for c, (a, b) in pairs.items():
        out[c] = [None, None] if a is None or b is None else [a - k * b, b * k + a]
    return out


def _scale(method: str) -> Fit:
    if method == "robust":
        qs = yield from quantiles([0.5, 0.25, 0.75])
        pairs = {c: (v[0], None if v[0] is None else v[2] - v[1]) for c, v in qs.items()}
    else:
        got = yield {"moments": True}
        pairs = {c: ((m.mean, m.std) if method == "standard" else (m.min, m.max - m.min)) if m.n else (None, None)
                 for c, m in got["moments"].items()}
    return {c: [float(a) if a is not None else 0.0, float(b) if b else 1.0] for c, (a, b) in pairs.items()}


def _bucket(method: str, n: int) -> Fit:
    cuts = [i / n for i in range(1, n)]
    if method == "quantile":
        qs = yield from quantiles(cuts)
        return {c: [] if v and v[0] is None else list(v) for c, v in qs.items()}
    got = yield {"moments": True}
    return {c: [m.min + (m.max - m.min) * q for q in cuts] if m.n else [] for c, m in got["moments"].items()}


def _encode(max_categories: int) -> Fit:
    got = yield {"counts": True}
    return {c: P.most_frequent(n, int(max_categories)) for c, n in got["counts"].items()}


def merge(request: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' partials (in shard order) merged per primitive of the request."""
    out: dict[str, Any] = {}
    if "moments" in request:
        out["moments"] = {c: P.merge_moments([p["moments"][c] for p in parts]) for c in parts[0]["moments"]}
    if "counts" in request:
        out["counts"] = {c: P.merge_counts([p["counts"][c] for p in parts]) for c in parts[0]["counts"]}
    if "sketch" in request:
        out["sketch"] = {c: [p["sketch"][c] for p in parts] for c in parts[0]["sketch"]}
    if "window" in request:
        out["window"] = [[p["window"][i] for p in parts] for i in range(len(request["window"]))]
    return out

