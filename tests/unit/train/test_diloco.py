"""DiLoCo's outer step, synchronous and asynchronous (delayed by d inner steps), in one process: the arithmetic
of the delayed merge, and an outer step in flight carried through a checkpoint's state."""

from __future__ import annotations

import copy

import pytest

from granary.train.diloco import DiLoCo
from granary.train.dist import Dist
from granary.train.recipe import ParallelConfig

torch = pytest.importorskip("torch")


def _inner(model: torch.nn.Module, step: int) -> None:
    """A deterministic stand-in for an inner optimiser step."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.01 * (step + i + 1))


def _run(delay: int, steps: int, *, model: torch.nn.Module | None = None, start: int = 0,
         state: dict | None = None, stop: int | None = None) -> tuple[torch.nn.Module, DiLoCo, list[int]]:
    """Steps ``start+1 .. stop`` of a run of ``steps`` steps (DiLoCo with H = 3)."""
    torch.manual_seed(0)
    model = model or torch.nn.Linear(3, 2)
    d = DiLoCo(model, ParallelConfig(mode="diloco", diloco_h=3, diloco_delay=delay, diloco_outer_lr=0.7,
                                     diloco_outer_momentum=0.9), Dist())
    if state is not None:
        d.load_state_dict(state["diloco"])
        d.load_pending(state["pending"])
    applied = []
    for step in range(start + 1, (stop or steps) + 1):
        _inner(model, step)
        if d.after_step(step, last=step == steps):
            applied.append(step)
    return model, d, applied


def test_sync_outer_step_resets_local_to_global() -> None:
    _, d, applied = _run(0, 6)
    assert applied == [3, 6]
    assert all(torch.equal(p, g) for p, g in zip(d.params, d.global_params, strict=True))


def test_delayed_outer_step_keeps_the_local_progress() -> None:
    torch.manual_seed(0)
    ref = torch.nn.Linear(3, 2)
    _, _, applied = _run(2, 8)
    assert applied == [5, 8]  # started at 3 and 6; applied 2 steps later, and at the last step
    # replay by hand: global g0; snapshot s at step 3; local at step 5 = new global + (local5 - s)
    g0 = [p.detach().clone() for p in ref.parameters()]
    outer = torch.optim.SGD([x.requires_grad_(True) for x in g0], lr=0.7, momentum=0.9, nesterov=True)
    local = copy.deepcopy(ref)
    for step in range(1, 4):
        _inner(local, step)
    snap = [p.detach().clone() for p in local.parameters()]
    for step in (4, 5):
        _inner(local, step)
    for g, s in zip(g0, snap, strict=True):
        g.grad = (g.detach() - s)
    outer.step()
    expected = [g.detach() + (p.detach() - s) for g, p, s in zip(g0, local.parameters(), snap, strict=True)]
    model5, _, _ = _run(2, 8, stop=5)
    got = list(model5.parameters())
    assert all(torch.allclose(a, b) for a, b in zip(got, expected, strict=True))


def test_an_outer_step_in_flight_survives_a_checkpoint() -> None:
    full, _, _ = _run(2, 9)
    model, d, _ = _run(2, 9, stop=7)  # stopped after step 7: step 6's outer step is still in flight
    assert d.pending is not None and d.pending["due"] == 8
    saved = copy.deepcopy({"diloco": d.state_dict(), "pending": d.pending_state(), "local": model.state_dict()})
    torch.manual_seed(0)
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(saved["local"])
    resumed, _, applied = _run(2, 9, model=fresh, start=7, state=saved)
    assert applied == [8, 9]
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), full.parameters(), strict=True))
