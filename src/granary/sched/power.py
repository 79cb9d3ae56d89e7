"""Energy-aware scheduling in the simulator: node power-down when idle, a cluster power cap, energy per run.

The power model of a node is ``base_w`` (CPUs, memory, fans, NICs) plus, per GPU, ``gpu_busy_w`` when a job
holds it or ``gpu_idle_w`` when not; a powered-down node draws ``off_w``. A node idle for ``power_down_after_s``
is powered down; a job placed on it starts ``power_up_s`` later (it holds its GPUs meanwhile, which is the JCT
cost). A cap in watts becomes a bound on busy GPUs that the scheduler respects (``SchedulerConfig.max_busy_gpus``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from granary.sched.metrics import RunMetrics
from granary.sched.model import StartDecision
from granary.sched.simulator import SimConfig, Simulator
from granary.sched.trace import Trace


@dataclass(kw_only=True, frozen=True)
class PowerConfig:
    """Node power model and power management.

    Attributes:
        base_w: node power without its GPUs, when on.
        gpu_idle_w, gpu_busy_w: per-GPU power, idle and held by a job (a job is assumed to keep its GPUs busy).
        off_w: a powered-down node (BMC, PSU losses).
        power_down_after_s: power a node down after this long idle (None: never).
        power_up_s: boot time of a powered-down node.
        cap_w: cluster power cap (None: none).
    """

    base_w: float = 800.0
    gpu_idle_w: float = 70.0
    gpu_busy_w: float = 400.0
    off_w: float = 20.0
    power_down_after_s: float | None = None
    power_up_s: float = 300.0
    cap_w: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.off_w <= self.base_w or not 0 <= self.gpu_idle_w <= self.gpu_busy_w:
            raise ValueError("need 0 <= off_w <= base_w and 0 <= gpu_idle_w <= gpu_busy_w")
        if self.power_down_after_s is not None and self.power_down_after_s < 0:
            raise ValueError(f"power_down_after_s must be >= 0, got {self.power_down_after_s}")
        if self.power_up_s < 0 or (self.cap_w is not None and self.cap_w <= 0):
            raise ValueError("power_up_s must be >= 0 and cap_w > 0")


def gpus_under_cap(cap_w: float, *, nodes: int, gpus_per_node: int, power: PowerConfig) -> int:
    """How many GPUs may be busy at once with every node on and the cluster within ``cap_w``."""
    floor_w = nodes * (power.base_w + gpus_per_node * power.gpu_idle_w)
    extra = (power.gpu_busy_w - power.gpu_idle_w) or 1e-9
    return max(0, min(nodes * gpus_per_node, math.floor((cap_w - floor_w) / extra)))


class PowerSimulator(Simulator):
    """The simulator with per-node energy accounting and power-down of idle nodes.

    Args:
        config: the simulated cluster (its ``max_busy_gpus`` is set from ``power.cap_w``).
        power: the power model.
    """

    def __init__(self, config: SimConfig, power: PowerConfig) -> None:
        super().__init__(config)
        self.power = power
        n = len(self.node_specs)
        if power.cap_w is not None:
            cap = gpus_under_cap(power.cap_w, nodes=n, gpus_per_node=config.gpus_per_node, power=power)
            self.state.config = replace(self.state.config, max_busy_gpus=cap)
        self.busy = np.zeros(n, dtype=np.int64)
        self.since = np.zeros(n)  # last accounting time per node
        self.idle_since = np.zeros(n)
        self.energy_j = np.zeros(n)
        self.off_s = np.zeros(n)
        self.wakeups = 0
        self.peak_busy = 0
        self.held: dict[int, list[tuple[int, int]]] = {}

    def _off_at(self, i: int) -> float:
        t_off = self.power.power_down_after_s
        return math.inf if t_off is None or self.busy[i] else self.idle_since[i] + t_off

    def _advance(self, i: int, t: float) -> None:
        p, g = self.power, self.config.gpus_per_node
        start = self.since[i]
        if t <= start:
            return
        on_w = p.base_w + self.busy[i] * p.gpu_busy_w + (g - self.busy[i]) * p.gpu_idle_w
        off_from = max(start, min(t, self._off_at(i)))
        self.energy_j[i] += on_w * (off_from - start) + p.off_w * (t - off_from)
        self.off_s[i] += t - off_from
        self.since[i] = t

    def _started(self, d: StartDecision, now: float) -> float:
        delay = 0.0
        per_node: list[tuple[int, int]] = []
        for i, ids in d.placement:
            if now >= self._off_at(i):
                delay = self.power.power_up_s
                self.wakeups += 1
            self._advance(i, now)
            self.busy[i] += len(ids)
            per_node.append((i, len(ids)))
        self.held[int(d.job_id)] = per_node
        self.peak_busy = max(self.peak_busy, int(self.busy.sum()))
        return delay

    def _stopped(self, idx: int, now: float) -> None:
        for i, count in self.held.pop(idx, ()):
            self._advance(i, now)
            self.busy[i] -= count
            if self.busy[i] == 0:
                self.idle_since[i] = now

    def run(self, trace: Trace) -> RunMetrics:
        """Replay the trace; energy is accounted from time 0 to the last finish."""
        metrics = super().run(trace)
        end = float(trace.submit_s.min()) + metrics.makespan_s if len(trace) else 0.0
        for i in range(len(self.node_specs)):
            self._advance(i, end)
        return metrics


@dataclass(frozen=True)
class EnergyResult:
    """One simulated run with its energy."""

    name: str
    metrics: RunMetrics
    energy_kwh: float
    off_share: float
    peak_kw: float
    wakeups: int
    max_busy_gpus: int | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"name": self.name, "energy_kwh": self.energy_kwh, "off_share": self.off_share, "peak_kw": self.peak_kw,
                "wakeups": self.wakeups, "max_busy_gpus": self.max_busy_gpus, **self.metrics.to_dict()}


def simulate_energy(trace: Trace, config: SimConfig, power: PowerConfig, *, name: str = "") -> EnergyResult:
    """Replay ``trace`` with energy accounting."""
    sim = PowerSimulator(config, power)
    m = sim.run(trace)
    n = len(sim.node_specs)
    span = max(m.makespan_s, 1e-9) * n
    peak_w = n * (power.base_w + config.gpus_per_node * power.gpu_idle_w) \
        + sim.peak_busy * (power.gpu_busy_w - power.gpu_idle_w)  # with every node on: an upper bound
    return EnergyResult(name or f"{config.policy}/{config.placement}", m, float(sim.energy_j.sum()) / 3.6e6,
                        float(sim.off_s.sum()) / span, peak_w / 1000.0, sim.wakeups, sim.state.config.max_busy_gpus)
