"""Knowledge distillation as a training recipe: a smaller reference GPT learns from a registered teacher.

The student minimises ``alpha * CE(student, next token) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``
(Hinton et al.'s soft targets at temperature ``T``) on a tokens version streamed through the store's gate. The
result is registered as a ``distilled`` version of the teacher's model, with the data version in its lineage.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from granary.models.artifact import model_config
from granary.models.registry import ModelVersion, Registry


@dataclass(kw_only=True, frozen=True)
class DistillRecipe:
    """How to distil.

    Attributes:
        student: architecture fields that differ from the teacher's (e.g. ``{"d_model": 16, "n_layers": 1}``).
        data: the tokens version to train on.
        steps: optimiser steps.
        batch_size: samples per step.
        lr: AdamW learning rate.
        temperature: softening temperature ``T``.
        alpha: weight of the hard-label loss.
        seed: initialisation and shuffle seed.
        purpose: declared purpose of the data read.
    """

    student: Mapping[str, Any] = field(default_factory=dict)
    data: str
    steps: int = 200
    batch_size: int = 16
    lr: float = 3e-3
    temperature: float = 2.0
    alpha: float = 0.5
    seed: int = 0
    purpose: str = "pretraining"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise ValueError("steps, batch_size >= 1; temperature > 0; alpha in [0, 1]")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *, temperature: float,
                 alpha: float) -> torch.Tensor:
    """The distillation loss of one batch (logits ``(B, T, V)``, targets ``(B, T)``)."""
    v = student.shape[-1]
    hard = F.cross_entropy(student.reshape(-1, v), targets.reshape(-1))
    soft = F.kl_div(F.log_softmax(student.reshape(-1, v) / temperature, dim=-1),
                    F.log_softmax(teacher.reshape(-1, v) / temperature, dim=-1), log_target=True,
                    reduction="batchmean")
    return alpha * hard + (1 - alpha) * temperature ** 2 * soft


def distill(registry: Registry, teacher_ref: str, recipe: DistillRecipe) -> ModelVersion:
    """Train a student from ``teacher_ref`` on ``recipe.data`` and register it; returns the new version."""
    from granary.stream import StreamingDataset
    from granary.train.model import GPT

    teacher_mv = registry.get(teacher_ref)
    teacher = registry.load(teacher_mv, purpose=recipe.purpose).eval()
    cfg = model_config({**teacher_mv.facts["arch"], **dict(recipe.student)})
    torch.manual_seed(recipe.seed)
    student = GPT(cfg)
    info = registry.store.resolve(recipe.data)
    ds = StreamingDataset(f"{info.dataset}@{info.id}", batch_size=recipe.batch_size, seq_len=cfg.context + 1,
                          seed=recipe.seed, rank=0, world_size=1, store=registry.store, purpose=recipe.purpose)
    opt = torch.optim.AdamW(student.parameters(), lr=recipe.lr)
    t0, step, losses = time.perf_counter(), 0, []
    student.train()
    while step < recipe.steps:
        for batch in ds:
            tokens = batch["tokens"].long()
            x, y = tokens[:, :-1], tokens[:, 1:]
            with torch.no_grad():
                soft = teacher(x)
            loss = distill_loss(student(x), soft, y, temperature=recipe.temperature, alpha=recipe.alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step >= recipe.steps:
                break
    facts = {"distillation": {"teacher": teacher_mv.ref, "data": f"{info.dataset}@{info.id}", "steps": step,
                              "temperature": recipe.temperature, "alpha": recipe.alpha,
                              "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
                              "seconds": round(time.perf_counter() - t0, 2)},
             "params": {"teacher": sum(p.numel() for p in teacher.parameters()),
                        "student": sum(p.numel() for p in student.parameters())}}
    return registry.add_version(teacher_mv.name, student.eval(), method="distilled", parent=teacher_mv,
                                facts=facts, inputs=[info.id])
