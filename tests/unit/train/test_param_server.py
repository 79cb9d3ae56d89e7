"""The parameter server's pure state (staleness, rejections, ties, arrival order) and a one-process run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from granary.errors import TrainError
from granary.train.recipe import recipe_from_dict

torch = pytest.importorskip("torch")

from granary.train.param_server import Gradient, ParamServerState, flat_grad, load_flat  # noqa: E402


def _state(bound: int = 2, lr: float = 1.0) -> tuple[ParamServerState, torch.Tensor]:
    w = torch.zeros(3, requires_grad=True)
    return ParamServerState([w], torch.optim.SGD([w], lr=lr), staleness_bound=bound), w


def _g(worker: int, base: int, values: list[float], batch: int = 0, loss: float = 1.0) -> Gradient:
    return Gradient(worker, base, torch.tensor(values, dtype=torch.float32), loss, batch)


def test_applies_in_arrival_order_and_records_staleness() -> None:
    state, w = _state(bound=2)
    state.submit(_g(0, 0, [1, 0, 0], batch=10))
    first = state.drain()
    assert [a.version for a in first.applied] == [1] and first.applied[0].staleness == [0]
    state.submit(_g(1, 0, [0, 2, 0], batch=11))  # computed at version 0, arrives at version 1
    state.submit(_g(0, 1, [0, 0, 4], batch=12))
    out = state.drain()
    assert [(a.version, a.workers, a.staleness, a.batch_ids) for a in out.applied] == [
        (2, [1], [1], [11]), (3, [0], [1], [12])]  # the second is one version old by the time it is applied
    assert w.detach().tolist() == [-1.0, -2.0, -4.0]  # SGD lr 1: each gradient subtracted once
    assert state.version == 3 and not out.rejected


def test_gradients_older_than_the_bound_are_rejected() -> None:
    state, w = _state(bound=1)
    for i in range(3):  # worker 0 makes versions 1, 2, 3
        state.submit(_g(0, i, [1, 0, 0], batch=i))
        state.drain()
    state.submit(_g(1, 1, [0, 5, 0], batch=7))  # staleness 2 > 1
    state.submit(_g(2, 2, [0, 0, 3], batch=8))  # staleness 1 == bound: applied
    out = state.drain()
    assert [g.batch_id for g in out.rejected] == [7]
    assert [(a.batch_ids, a.staleness) for a in out.applied] == [([8], [1])]
    assert w.detach().tolist() == [-3.0, 0.0, -3.0] and state.rejected_total == 1 and state.version == 4


def test_ties_at_the_bound_are_applied_as_their_mean() -> None:
    """Two gradients from the same version waiting together: one step with their mean, so the second is not made
    one version too old by the first."""
    state, w = _state(bound=1)
    state.submit(_g(0, 0, [1, 0, 0]))
    state.drain()
    state.submit(_g(1, 0, [2, 0, 0], batch=1, loss=2.0))
    state.submit(_g(2, 0, [0, 4, 0], batch=2, loss=4.0))
    out = state.drain()
    assert len(out.applied) == 1 and not out.rejected
    a = out.applied[0]
    assert (a.version, a.workers, a.staleness, a.loss) == (2, [1, 2], [1, 1], 3.0)
    assert w.detach().tolist() == [-2.0, -2.0, 0.0]  # -1, then the mean (1, 2, 0)


def test_late_gradients_after_the_last_step_are_dropped() -> None:
    state, _ = _state(bound=4)
    state.submit(_g(0, 0, [1, 1, 1], batch=1))
    state.submit(_g(1, 0, [1, 1, 1], batch=2))
    state.submit(_g(1, 0, [1, 1, 1], batch=3))
    assert state.drain(stop_at=1).applied[0].batch_ids == [1, 2, 3]  # one group: the mean
    state.submit(_g(0, 1, [1, 1, 1], batch=4))
    out = state.drain(stop_at=1)
    assert [g.batch_id for g in out.dropped] == [4] and state.version == 1


def test_bad_pushes_are_refused_with_a_reason() -> None:
    state, _ = _state()
    with pytest.raises(ValueError, match="2 gradient values; the parameters have 3"):
        state.submit(_g(0, 0, [1, 2]))
    with pytest.raises(ValueError, match="newer than the server"):
        state.submit(_g(0, 5, [1, 2, 3]))
    with pytest.raises(ValueError, match="staleness_bound"):
        ParamServerState([], torch.optim.SGD([torch.zeros(1, requires_grad=True)]), staleness_bound=-1)


def test_snapshot_and_flat_helpers_round_trip() -> None:
    a, b = torch.zeros(2, 2, requires_grad=True), torch.zeros(3, requires_grad=True)
    state = ParamServerState([a, b], torch.optim.SGD([a, b], lr=0.5), staleness_bound=0)
    version, flat = state.snapshot()
    assert version == 0 and flat.tolist() == [0.0] * 7
    load_flat([a, b], torch.arange(7, dtype=torch.float32))
    assert a.detach().tolist() == [[0, 1], [2, 3]] and b.detach().tolist() == [4, 5, 6]
    (a.sum() * 2).backward()
    assert flat_grad([a, b]).tolist() == [2.0] * 4 + [0.0] * 3  # b got no gradient: zeros
    with pytest.raises(ValueError, match="does not fit"):
        load_flat([a, b], torch.zeros(6))


def test_recipe_validates_the_staleness_bound(tmp_path: Path) -> None:
    base: dict[str, Any] = {"name": "x", "data": {"dataset": "d"}}
    assert recipe_from_dict({**base, "parallel": {"mode": "param_server"}}).parallel.ps_staleness == 4
    with pytest.raises(TrainError, match=r"parallel\.ps_staleness"):
        recipe_from_dict({**base, "parallel": {"mode": "param_server", "ps_staleness": -1}})


def test_slow_spec_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    from granary.train import chaos

    monkeypatch.setenv(chaos.SLOW_VAR, "1:0.25, 2:0.5,1:0.25")
    assert (chaos.slow_seconds(0), chaos.slow_seconds(1), chaos.slow_seconds(2)) == (0.0, 0.5, 0.5)
    monkeypatch.setenv(chaos.SLOW_VAR, "1=0.2")
    with pytest.raises(ValueError, match="not RANK:SECONDS"):
        chaos.slow_seconds(1)




def _recipe(tmp_path: Path, steps: int, **over: Any) -> Any:
    return recipe_from_dict({
        "name": "ps1", "steps": steps, "seed": 1, "run_dir": str(tmp_path / "ps1"),
        "model": {"vocab_size": 256, "d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16},
        "data": {"dataset": "tiny-tok", "batch_size": 4}, "optim": {"lr": 0.01, "schedule": "constant"},
        "checkpoint": {"every": 5}, "fault": {"step_timeout_s": 0},
        "parallel": {"mode": "param_server", "ps_staleness": 2}, **over})


def test_one_process_run_learns_checkpoints_and_resumes(home: Path, tmp_path: Path) -> None:
    """Alone, the server's one worker is never stale; a resumed run continues from the saved version, the loader's
    position and the optimiser state, and ends where an uninterrupted run ends (one worker: same order)."""
    from granary.config import Settings
    from granary.store import open_store
    from granary.train.metrics import read_metrics
    from granary.train.trainer import fit

    store = open_store(Settings.from_env(home=home))
    first = fit(_recipe(tmp_path, 10), store=store)
    assert first.steps == 10 and first.resumed_from is None and len(first.checkpoints) == 2
    recs = [r for r in read_metrics(tmp_path / "ps1") if "loss" in r]
    assert [r["step"] for r in recs] == list(range(1, 11))
    assert {r["staleness"] for r in recs} == {0} and recs[-1]["rejected_total"] == 0
    assert recs[-1]["comm_bytes"] == 0  # nothing crossed a network
    again = fit(_recipe(tmp_path, 15), store=store)
    assert again.resumed_from == 10 and again.steps == 15
    head = store.manifest(store.resolve("ps1-ckpt"))
    assert head.metadata["step"] == 15 and head.metadata["mode"] == "param_server"
    assert head.metadata["loader"]["position"] == 15 * 4  # every batch handed out once, none in flight at the end
    straight = fit(_recipe(tmp_path, 15, name="ps1b", run_dir=str(tmp_path / "ps1b")), store=store)
    assert straight.final_loss == pytest.approx(again.final_loss, rel=1e-5)
    losses = [r["loss"] for r in read_metrics(tmp_path / "ps1b") if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1  # it learns


def test_resume_refuses_a_checkpoint_of_another_mode(home: Path, tmp_path: Path) -> None:
    from granary.config import Settings
    from granary.store import open_store
    from granary.train.trainer import fit

    store = open_store(Settings.from_env(home=home))
    fit(_recipe(tmp_path, 2, parallel={"mode": "single"}), store=store)
    with pytest.raises(TrainError, match="not saved by a param_server run"):
        fit(_recipe(tmp_path, 4), store=store)
