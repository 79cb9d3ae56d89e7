"""The gradient noise scale estimator against a case with a known answer."""

from __future__ import annotations

import torch

from granary.train.noise import NoiseScale


class _FakeDist:
    """Two ranks whose squared local norms average to what the test says."""

    enabled, world_size, rank = True, 2, 1

    def __init__(self, small_sq_mean: float) -> None:
        self.small_sq_mean = small_sq_mean

    def all_reduce(self, values: list[float]) -> list[float]:
        return [self.small_sq_mean * self.world_size]


def test_noise_scale_recovers_trace_over_squared_gradient() -> None:
    # true gradient G with |G|^2 = 4, per-sample noise trace tr(S) = 80; batches 4 (one rank) and 8 (two ranks):
    # E|g_s|^2 = 4 + 80/4 = 24, E|g_b|^2 = 4 + 80/8 = 14 -> B_simple = 80 / 4 = 20
    model = torch.nn.Linear(2, 1, bias=False)
    est = NoiseScale(model, _FakeDist(24.0), local_batch=4, every=1)
    model.weight.grad = None
    model(torch.ones(1, 2)).sum().backward()  # runs the hook (the value it adds up is replaced by the fake)
    assert abs(est.update(14.0**0.5) - 20.0) < 1e-6


def test_noise_scale_is_off_for_one_process() -> None:
    class One:
        enabled, world_size, rank = False, 1, 0

    assert NoiseScale(torch.nn.Linear(2, 1), One(), local_batch=4).update(1.0) is None


def test_a_discarded_backward_is_not_counted() -> None:
    """A backward that is no training step (a resumed run's warm-up) leaves the next estimate unchanged."""

    class Echo:
        enabled, world_size, rank = True, 2, 1

        def all_reduce(self, values: list[float]) -> list[float]:
            return [values[0] * self.world_size]  # every rank saw what this one saw

    def estimate(discard_first: bool) -> float | None:
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1, bias=False)
        est = NoiseScale(model, Echo(), local_batch=4, every=1)
        if discard_first:
            model(torch.full((1, 2), 5.0)).sum().backward()
            model.weight.grad = None
            est.discard()
        model(torch.ones(1, 2)).sum().backward()
        return est.update(1.5**0.5)  # |g_b|^2 = 1.5 against |g_s|^2 = 2: a positive estimate

    assert estimate(True) == estimate(False) is not None
