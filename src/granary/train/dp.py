"""Differentially private training (DP-SGD with Opacus) of the reference recipe, charged to the data's budget.

Per-sample gradients (Opacus ``GradSampleModule``) are clipped to ``max_grad_norm`` and Gaussian noise of std
``noise_multiplier * max_grad_norm`` is added to their sum each step; Opacus' RDP accountant tracks epsilon.
Before the first step the run's planned (epsilon, delta) is charged to the dataset's privacy budget (the same
ledger as the private statistics of :mod:`granary.secure.dp`), so an exhausted budget refuses the run and every
run is in the ledger; the accountant's epsilon is recorded in the checkpoint's lineage.

The privacy unit is one training sample (``context + 1`` tokens). Batches are fixed-size draws from a shuffled
stream, whereas the accountant assumes Poisson sampling at rate ``batch_size / samples``; this is the usual
practice and is stated in docs/privacy.md.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from granary.errors import MissingDependencyError, TrainError
from granary.train.model import GPT, loss_fn
from granary.train.recipe import Recipe

log = logging.getLogger(__name__)


def _opacus() -> Any:
    try:
        import opacus
    except ImportError:
        raise MissingDependencyError("opacus", "privacy") from None
    return opacus


def noise_multiplier(*, epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier for which ``steps`` sampled Gaussian steps stay (epsilon, delta)-DP."""
    _opacus()
    from opacus.accountants.utils import get_noise_multiplier

    if not (epsilon > 0 and 0 < delta < 1 and 0 < sample_rate <= 1 and steps >= 1):
        raise ValueError(f"bad accountant inputs: epsilon={epsilon}, delta={delta}, sample_rate={sample_rate}, "
                         f"steps={steps}")
    with warnings.catch_warnings():  # the search visits large noises whose bound is tightest at the last order
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant="rdp", epsilon_tolerance=0.005))


def epsilon_spent(*, noise_multiplier: float, delta: float, sample_rate: float, steps: int) -> float:
    """Epsilon of ``steps`` sampled Gaussian steps at ``noise_multiplier`` (RDP accountant)."""
    _opacus()
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acc.get_epsilon(delta))


@dataclass(kw_only=True, frozen=True)
class DPConfig:
    """DP-SGD settings: the target (epsilon, delta) over the whole run and the per-sample clipping norm."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and 0 < self.delta < 1 and self.max_grad_norm > 0):
            raise TrainError(f"DP-SGD needs epsilon > 0, 0 < delta < 1 and max_grad_norm > 0; got epsilon="
                             f"{self.epsilon}, delta={self.delta}, max_grad_norm={self.max_grad_norm}")


@dataclass
class DPResult:
    """What a DP (or, with ``dp=None``, a plain) run of :func:`fit_private` reports."""

    steps: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    samples_per_second: float = 0.0
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    checkpoint: str = ""
    privacy: dict[str, Any] = field(default_factory=dict)
    model: torch.nn.Module | None = field(default=None, repr=False)


class PerSampleGPT(GPT):
    """The reference GPT with positions expanded over the batch, so every parameter's gradient is per sample
    (Opacus computes per-sample gradients from each layer's batched input). Same parameters and names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.tok_emb is not None and self.pos_emb is not None and self.norm is not None and self.head
        pos = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        h = self.tok_emb(x) + self.pos_emb(pos)
        for block in self.blocks.values():
            h = block(h)
        return self.head(self.norm(h))


def _charge(store: Any, dataset: str, run: str, epsilon: float, delta: float) -> None:
    from granary.secure.dp import PrivateStats
    from granary.secure.guard import Guard
    from granary.secure.settings import SecureSettings

    guard = Guard(store.catalog, SecureSettings.from_env(store.settings.home))
    PrivateStats(guard).charge(dataset, query=f"dp-sgd:{run}", mechanism="dp-sgd", epsilon=epsilon, delta=delta)


def fit_private(recipe: Recipe, dp: DPConfig | None, *, store: Any = None, save: bool = True) -> DPResult:
    """Train the recipe's model on its data with DP-SGD (``dp``), or without privacy (``dp=None``, the baseline).

    Single process. Raises :class:`granary.secure.errors.BudgetExhaustedError` before any step when the
    dataset's budget cannot pay for the run.
    """
    from granary.stream import StreamingDataset
    from granary.train.trainer import seed_all

    if store is None:
        from granary.store import open_store

        store = open_store()
    torch.set_num_threads(recipe.threads)
    version = store.resolve(recipe.data.dataset)
    ds = StreamingDataset(version.ref, batch_size=recipe.data.batch_size, seq_len=recipe.model.context + 1,
                          seed=recipe.data.seed, shuffle=recipe.data.shuffle, rank=0, world_size=1, store=store,
                          purpose=recipe.data.purpose)
    seed_all(recipe.seed)
    model: torch.nn.Module = PerSampleGPT(recipe.model)
    o = recipe.optim
    optimizer: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay,
                                                         betas=(o.beta1, o.beta2))
    privacy: dict[str, Any] = {}
    accountant = None
    if dp is not None:
        model, optimizer, accountant, privacy = _make_private(model, optimizer, recipe, dp, ds.num_samples)
        _charge(store, version.dataset, recipe.name, privacy["charged_epsilon"], dp.delta)
    with warnings.catch_warnings():  # Opacus' hooks on the embedding, whose integer input needs no gradient
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        losses, seconds = _loop(model, optimizer, ds, recipe, clip=dp is None)
    result = DPResult(steps=recipe.steps, final_loss=losses[-1], losses=losses,
                      samples_per_second=recipe.steps * recipe.data.batch_size / seconds)
    if accountant is not None and dp is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            privacy["epsilon"] = float(accountant.get_epsilon(dp.delta))
        result.epsilon, result.delta = privacy["epsilon"], dp.delta
        result.noise_multiplier, result.privacy = privacy["noise_multiplier"], privacy
    raw = getattr(model, "_module", model)
    result.model = raw
    if save:
        result.checkpoint = _save(store, recipe, raw, version, ds, privacy)
    return result


def _loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ds: Any, recipe: Recipe, *,
          clip: bool) -> tuple[list[float], float]:
    from granary.train.trainer import lr_at

    o = recipe.optim
    losses: list[float] = []
    batches = iter(ds)
    model.train()
    t0 = time.perf_counter()
    for step in range(recipe.steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(ds)
            batch = next(batches)
        tokens = batch["tokens"]
        for g in optimizer.param_groups:
            g["lr"] = lr_at(recipe, step)
        loss = loss_fn(model(tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
        if clip and o.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, time.perf_counter() - t0


def _make_private(model: torch.nn.Module, optimizer: torch.optim.Optimizer, recipe: Recipe, dp: DPConfig,
                  num_samples: int) -> tuple[Any, Any, Any, dict[str, Any]]:
    _opacus()
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.optimizers import DPOptimizer

    batch = recipe.data.batch_size
    if num_samples < batch:
        raise TrainError(f"{recipe.data.dataset} holds {num_samples} samples, fewer than one batch of {batch}")
    rate = batch / num_samples
    sigma = noise_multiplier(epsilon=dp.epsilon, delta=dp.delta, sample_rate=rate, steps=recipe.steps)
    planned = epsilon_spent(noise_multiplier=sigma, delta=dp.delta, sample_rate=rate, steps=recipe.steps)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    dpo = DPOptimizer(optimizer, noise_multiplier=sigma, max_grad_norm=dp.max_grad_norm, expected_batch_size=batch,
                      loss_reduction="mean")
    accountant = RDPAccountant()
    dpo.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=rate))
    privacy = {"mechanism": "dp-sgd", "accountant": "rdp", "target_epsilon": dp.epsilon, "delta": dp.delta,
               "charged_epsilon": planned, "noise_multiplier": sigma, "max_grad_norm": dp.max_grad_norm,
               "sample_rate": rate, "steps": recipe.steps, "unit": f"one sample of {recipe.model.context + 1} tokens"}
    return gsm, dpo, accountant, privacy


def _save(store: Any, recipe: Recipe, model: torch.nn.Module, version: Any, ds: Any, privacy: dict[str, Any]) -> str:
    from granary.train.checkpoint import CheckpointManager
    from granary.train.dist import Dist
    from granary.train.lineage import code_hash, run_lineage
    from granary.train.trainer import default_run_dir

    dist = Dist.init()
    ckpt = CheckpointManager(store, recipe.checkpoint_dataset, dist=dist, purpose=recipe.data.purpose,
                             run_dir=default_run_dir(recipe))
    ckpt.ensure_dataset(description=f"checkpoints of training run {recipe.name}")
    loader = ds.state_dict()
    lineage = run_lineage(recipe, pinned=version.ref, loader=loader, segments=[], start_step=0, start_position=0,
                          step=recipe.steps)
    if privacy:
        lineage["privacy"] = privacy
    meta = {"run": recipe.name, "model_hash": recipe.model_hash(), "model": recipe.to_dict()["model"],
            "recipe": recipe.to_dict(), "data": {"ref": version.ref, "versions": loader["versions"]},
            "loader": loader, "code": code_hash(), "privacy": privacy}
    vid = ckpt.save(recipe.steps, {"model": model.state_dict()}, extra={}, metadata=meta, lineage=lineage)
    ckpt.drain()
    return vid
