"""Energy-aware scheduling in the simulator: energy by hand on a tiny trace, power-down and its wake-up cost,
a power cap that the scheduler respects."""

from __future__ import annotations

import numpy as np
import pytest

from granary.sched.power import PowerConfig, PowerSimulator, gpus_under_cap, simulate_energy
from granary.sched.simulator import SimConfig
from granary.sched.trace import Trace

P = PowerConfig(base_w=100.0, gpu_idle_w=10.0, gpu_busy_w=50.0, off_w=1.0, power_up_s=30.0)


def trace(submit: list[float], duration: list[float], gpus: list[int]) -> Trace:
    n = len(submit)
    return Trace(np.array(submit, dtype=float), np.array(duration, dtype=float), np.array(gpus), np.zeros(n, int),
                 ("t",))


def test_energy_of_an_always_on_cluster_by_hand() -> None:
    # 2 nodes x 2 GPUs; one 2-GPU job for 100 s: makespan 100 s
    r = simulate_energy(trace([0.0], [100.0], [2]),
                        SimConfig(gpus=4, gpus_per_node=2, policy="fifo", cost_model="ideal"), P)
    busy_node = 100 + 2 * 50
    idle_node = 100 + 2 * 10
    assert r.energy_kwh * 3.6e6 == pytest.approx((busy_node + idle_node) * 100.0)
    assert r.metrics.avg_jct_s == pytest.approx(100.0) and r.wakeups == 0


def test_power_down_saves_idle_energy_and_costs_a_boot() -> None:
    # job A at t=0 for 10 s, job B at t=200 for 10 s; nodes power down after 50 s idle
    tr = trace([0.0, 200.0], [10.0, 10.0], [2, 2])
    cfg = SimConfig(gpus=4, gpus_per_node=2, policy="fifo", cost_model="ideal", placement="binpack")
    on = simulate_energy(tr, cfg, P)
    off = simulate_energy(tr, cfg, PowerConfig(**{**P.__dict__, "power_down_after_s": 50.0}))
    assert off.wakeups >= 1
    assert off.metrics.avg_jct_s == pytest.approx(on.metrics.avg_jct_s + 30.0 * off.wakeups / 2)
    assert off.energy_kwh < on.energy_kwh and 0 < off.off_share < 1


def test_power_cap_bounds_busy_gpus() -> None:
    assert gpus_under_cap(10_000.0, nodes=2, gpus_per_node=2, power=P) == 4
    floor = 2 * (100 + 2 * 10)
    assert gpus_under_cap(floor + 40.0 * 2, nodes=2, gpus_per_node=2, power=P) == 2
    tr = trace([0.0, 0.0, 0.0], [100.0, 100.0, 100.0], [1, 1, 1])
    sim = PowerSimulator(SimConfig(gpus=4, gpus_per_node=2, policy="fifo", cost_model="ideal"),
                         PowerConfig(**{**P.__dict__, "cap_w": floor + 80.0}))
    m = sim.run(tr)
    assert sim.state.config.max_busy_gpus == 2 and sim.peak_busy == 2
    assert m.jobs == 3 and m.avg_jct_s == pytest.approx((100 + 100 + 200) / 3)


def test_bad_power_settings() -> None:
    with pytest.raises(ValueError):
        PowerConfig(gpu_idle_w=100.0, gpu_busy_w=50.0)
    with pytest.raises(ValueError):
        PowerConfig(cap_w=0.0)
