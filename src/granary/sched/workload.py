"""Model families for the simulator: scaling curves, batch limits, noise scales, restart costs; trace mapping.

The six families are those of Pollux's evaluation workload. Their parameters are *not measured here* (no GPU
cluster): they are chosen so that the step-time curves have the published shapes (compute-bound image models
that scale well inside a node, communication-heavy language/speech models that lose much across nodes, a
recommendation model that is all communication) on a V100-class GPU. docs/sched.md lists them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from granary.sched.goodput import GoodputModel, ThroughputParams
from granary.sched.trace import Trace


@dataclass(kw_only=True, frozen=True)
class ModelFamily:
    """A kind of training job.

    Attributes:
        name: short name.
        params: step-time model (seconds).
        base_batch: the global batch the job is tuned for (what fixed-size schedulers run it with).
        max_batch: the largest global batch that keeps its accuracy (with the learning-rate scaler).
        max_local_batch: samples one GPU holds.
        noise_scale: gradient noise scale (drives statistical efficiency).
        max_gpus: the most GPUs an elastic run of it uses.
        restart_s: stop + checkpoint + restart + warm-up at a new size (seconds).
        checkpoint_s: one periodic checkpoint (seconds of lost progress).
    """

    name: str
    params: ThroughputParams
    base_batch: int
    max_batch: int
    max_local_batch: int
    noise_scale: float
    max_gpus: int
    restart_s: float
    checkpoint_s: float

    def model(self) -> GoodputModel:
        """A goodput model with this family's parameters (what the job would report after a few steps)."""
        return GoodputModel(params=self.params, base_batch=self.base_batch, min_batch=self.base_batch,
                            max_batch=self.max_batch, max_local_batch=self.max_local_batch,
                            noise_scale=self.noise_scale)


P = ThroughputParams
FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (
    ModelFamily(name="cifar10-resnet18", params=P(a_grad=0.010, b_grad=0.00045, a_local=0.006, b_local=0.001,
                                                  a_node=0.030, b_node=0.006, gamma=1.6),
                base_batch=128, max_batch=4096, max_local_batch=1024, noise_scale=1200.0, max_gpus=16,
                restart_s=25.0, checkpoint_s=1.0),
    ModelFamily(name="neumf-movielens", params=P(a_grad=0.004, b_grad=0.000002, a_local=0.004, b_local=0.0008,
                                                 a_node=0.030, b_node=0.010, gamma=1.2),
                base_batch=4096, max_batch=32768, max_local_batch=32768, noise_scale=8000.0, max_gpus=8,
                restart_s=20.0, checkpoint_s=1.0),
    ModelFamily(name="deepspeech2", params=P(a_grad=0.040, b_grad=0.018, a_local=0.030, b_local=0.004,
                                             a_node=0.150, b_node=0.030, gamma=1.4),
                base_batch=20, max_batch=640, max_local_batch=40, noise_scale=800.0, max_gpus=32,
                restart_s=40.0, checkpoint_s=4.0),
    ModelFamily(name="yolov3", params=P(a_grad=0.050, b_grad=0.060, a_local=0.040, b_local=0.005,
                                        a_node=0.200, b_node=0.030, gamma=1.5),
                base_batch=8, max_batch=512, max_local_batch=16, noise_scale=400.0, max_gpus=32,
                restart_s=45.0, checkpoint_s=5.0),
    ModelFamily(name="bert-squad", params=P(a_grad=0.030, b_grad=0.025, a_local=0.050, b_local=0.006,
                                            a_node=0.300, b_node=0.040, gamma=1.3),
                base_batch=12, max_batch=384, max_local_batch=24, noise_scale=250.0, max_gpus=32,
                restart_s=50.0, checkpoint_s=8.0),
    ModelFamily(name="imagenet-resnet50", params=P(a_grad=0.020, b_grad=0.0034, a_local=0.030, b_local=0.004,
                                                   a_node=0.100, b_node=0.015, gamma=1.8),
                base_batch=256, max_batch=12800, max_local_batch=128, noise_scale=6000.0, max_gpus=64,
                restart_s=60.0, checkpoint_s=10.0),
)}

# GPU-hour bins (as the Pollux artifact groups Philly jobs) -> the families a job of that size is drawn from.
BINS: tuple[tuple[float, tuple[str, ...]], ...] = (
    (1.0, ("cifar10-resnet18", "neumf-movielens")),
    (10.0, ("deepspeech2", "yolov3")),
    (100.0, ("bert-squad", "yolov3")),
    (float("inf"), ("imagenet-resnet50",)),
)


def family_of(duration_s: float, gpus: int, job_index: int) -> ModelFamily:
    """The family a trace job maps to: its GPU-hours pick the bin, a hash of its index the member."""
    gpu_h = duration_s * gpus / 3600.0
    for limit, names in BINS:
        if gpu_h < limit:
            return FAMILIES[names[zlib.crc32(str(job_index).encode()) % len(names)]]
    raise AssertionError("the last bin is unbounded")


def families_for(trace: Trace) -> list[ModelFamily]:
    """The family of every job of ``trace``."""
    return [family_of(float(trace.duration_s[i]), int(trace.gpus[i]), i) for i in range(len(trace))]


def pollux_workload(num_jobs: int, *, hours: float = 8.0, seed: int = 0, num_tenants: int = 4) -> Trace:
    """A synthetic workload of the kind Pollux evaluates on: ``num_jobs`` arrivals spread over ``hours`` (Poisson),
    sizes and durations drawn per GPU-hour bin (most jobs small, a few large ones holding most GPU-time)."""
    if num_jobs < 1 or hours <= 0:
        raise ValueError(f"need num_jobs >= 1 and hours > 0, got {num_jobs}, {hours}")
    rng = np.random.default_rng(seed)
    bins = rng.choice(4, size=num_jobs, p=[0.72, 0.20, 0.06, 0.02])
    gpu_h = np.exp(rng.uniform(np.log([0.1, 1, 10, 100])[bins], np.log([1, 10, 100, 500])[bins]))
    sizes = np.array([1, 1, 1, 2, 4, 8, 16])
    gpus = np.where(bins == 0, 1, rng.choice(sizes, size=num_jobs))
    gpus = np.where(bins == 3, np.maximum(gpus, 8), gpus)
    duration = np.maximum(60.0, gpu_h * 3600.0 / gpus).round()
    submit = np.sort(rng.uniform(0.0, hours * 3600.0, num_jobs))
    submit -= submit[0]
    tenant = rng.integers(0, num_tenants, num_jobs)
    return Trace(submit, duration, gpus.astype(np.int64), tenant.astype(np.int64),
                 tuple(f"t{i}" for i in range(num_tenants)))
