"""Evaluation: shards, identical results for any number of workers (real scheduler jobs), resume, gate, compare."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from granary.models.errors import EvalError, PromotionRefusedError
from granary.models.evaluate import (
    Gate,
    auto_shards,
    compare,
    done_shards,
    evaluate,
    make_plan,
    metrics_of,
    run_shards,
    shard_range,
)
from granary.models.registry import Registry
from tests.unit.models.conftest import Trained


@pytest.mark.parametrize("n,shards", [(10, 3), (7, 7), (3, 5), (1000, 16)])
def test_shards_cover_every_sample_once(n: int, shards: int) -> None:
    ranges = [shard_range(n, s, shards) for s in range(shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


@pytest.mark.parametrize("n,shards", [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (100_000, 100),
                                      (10_000_000, 4096)])
def test_auto_shards_hold_about_a_thousand_samples(n: int, shards: int) -> None:
    assert auto_shards(n) == shards
    with pytest.raises(ValueError, match="samples_per_shard"):
        auto_shards(10, samples_per_shard=0)


def test_plan_picks_shards_from_the_samples_evaluated(trained: Trained) -> None:
    store = trained.store()
    mv = Registry(store).register(trained.checkpoint, "autosh")
    samples = store.open_version(trained.heldout, purpose="evaluation").num_tokens // (mv.facts["arch"]["context"] + 1)
    assert make_plan(store, mv.ref, trained.heldout).num_shards == auto_shards(samples)
    assert make_plan(store, mv.ref, trained.heldout, max_samples=1).num_shards == 1
    assert make_plan(store, mv.ref, trained.heldout, num_shards=5).num_shards == 5


def test_same_shard_count_over_other_samples_is_refused_not_mixed_in(trained: Trained) -> None:
    """An evaluation of the first 5 samples in 1 shard, then of all samples in 1 shard: the recorded shard covers
    other samples, so the second is refused (it would have reported the 5-sample result) with what to do."""
    store = trained.store()
    mv = Registry(store).register(trained.checkpoint, "foreign")
    part = evaluate(store, make_plan(store, mv.ref, trained.heldout, num_shards=1, max_samples=5), inline=True)
    full_plan = make_plan(store, mv.ref, trained.heldout, num_shards=1)
    assert full_plan.samples > 5 and not done_shards(store, mv, full_plan)
    with pytest.raises(EvalError, match="over other samples than these") as info:
        evaluate(store, full_plan, inline=True)
    assert "--shards" in (info.value.hint or "")
    full = evaluate(store, make_plan(store, mv.ref, trained.heldout, num_shards=2), inline=True)
    assert part["metrics"]["tokens"] == 5 * 16 < full["metrics"]["tokens"]
    from granary.models.evaluate import results

    assert sorted((r["shards"], r["samples"]) for r in results(store, mv)) == [(1, 5), (2, full_plan.samples)]


def test_metrics_from_sums() -> None:
    m = metrics_of([{"nll": 2.0, "correct": 1, "tokens": 2}, {"nll": 4.0, "correct": 3, "tokens": 4}])
    assert m["loss"] == 1.0 and m["perplexity"] == pytest.approx(math.e) and m["accuracy"] == pytest.approx(4 / 6)
    with pytest.raises(EvalError, match="no tokens"):
        metrics_of([])


@pytest.mark.slow
def test_workers_give_identical_results_and_a_killed_run_resumes(trained: Trained) -> None:
    """Version 1 evaluated in one process; version 2 (the same weights) first half-done (as if its job was killed
    after two shards), then finished by two scheduler jobs: only the missing shards run, the metrics are equal."""
    store = trained.store()
    reg = Registry(store)
    one = reg.register(trained.checkpoint, "ev")
    two = reg.register(trained.checkpoint, "ev")
    full = evaluate(store, make_plan(store, one.ref, trained.heldout, num_shards=6), inline=True)
    plan = make_plan(store, two.ref, trained.heldout, num_shards=6)
    assert run_shards(store, plan, [0, 3]) == [0, 3]
    assert sorted(done_shards(store, two, plan)) == [0, 3]
    resumed = evaluate(store, plan, workers=2)
    assert resumed["computed"] == 4 and resumed["workers"] == 2
    assert resumed["metrics"] == full["metrics"]
    again = evaluate(store, plan, workers=2)
    assert again["computed"] == 0 and again["metrics"] == full["metrics"]
    events = [e for e in reg.events("ev") if e["action"] == "eval"]
    assert [e["version"] for e in events] == [1, 2, 2]


def test_workers_sharing_claims_compute_each_shard_once(trained: Trained, tmp_path: Path) -> None:
    """Two workers of one run share a claims directory: a shard claimed by one is skipped by the other."""
    store = trained.store()
    mv = Registry(store).register(trained.checkpoint, "claims")
    plan = make_plan(store, mv.ref, trained.heldout, num_shards=4)
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "1").touch()  # another worker holds shard 1
    assert run_shards(store, plan, [0, 1, 2, 3], claims=tmp_path / "claims") == [0, 2, 3]
    assert run_shards(store, plan, [1], claims=tmp_path / "claims") == []
    assert sorted(done_shards(store, mv, plan)) == [0, 2, 3]
    assert sorted(p.name for p in (tmp_path / "claims").iterdir()) == ["0", "1", "2", "3"]


def test_regression_gate_blocks_a_worse_version(trained: Trained) -> None:
    from granary.models.compress import compress

    store = trained.store()
    reg = Registry(store)
    base = reg.register(trained.checkpoint, "gate")
    same = reg.register(trained.checkpoint, "gate")
    worse = compress(reg, base.ref, "pruned-structured")  # half the rows gone: much worse
    for mv in (base, same, worse):
        evaluate(store, make_plan(store, mv.ref, trained.heldout, num_shards=2), inline=True)
    reg.set_alias(base.ref, "production")
    gate = Gate(data=trained.heldout, metric="perplexity", max_change=0.01)
    with pytest.raises(PromotionRefusedError, match=r"perplexity worsens by \d+\.\d+%"):
        reg.set_alias(worse.ref, "production", gate=gate)
    assert reg.aliases("gate")["production"] == base.version
    reg.set_alias(same.ref, "production", gate=gate)
    assert reg.aliases("gate")["production"] == same.version
    rows = compare(store, [base.ref, worse.ref, "gate"], trained.heldout)
    assert [r["model"] for r in rows] == ["gate@1", "gate@3", "gate@3"]
    assert rows[1]["metrics"]["perplexity"] > rows[0]["metrics"]["perplexity"] * 1.01


def test_evaluation_of_a_non_tokens_version_is_refused(trained: Trained) -> None:
    store = trained.store()
    Registry(store).register(trained.checkpoint, "ev-bad")
    with pytest.raises(EvalError, match="is a checkpoint version"):
        make_plan(store, "ev-bad", trained.checkpoint)
