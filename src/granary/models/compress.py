"""Compression: each method makes a new model version with its size, CPU latency and quality against the original.

Methods (a registry keyed by name, so the CLI can name them):

- ``int8-dynamic``: ``torch.ao.quantization.quantize_dynamic`` (int8 weights, activations quantized per batch).
- ``int4``: group-wise asymmetric weight-only int4, two values per byte (:mod:`granary.models.int4`), computed
  with torch's int4 CPU kernel where this torch has it.
- ``int8-weight`` / ``int4-weight``: group-wise symmetric weight-only quantization (:class:`WeightOnlyLinear`).
- ``pruned-magnitude``: ``torch.nn.utils.prune.l1_unstructured`` of every ``Linear`` to ``sparsity``.
- ``pruned-structured``: ``torch.nn.utils.prune.ln_structured`` (whole output rows by L2 norm) to ``sparsity``.

Distillation (a training recipe, not a transform) is :func:`granary.models.distill.distill`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from granary.models.codec import WEIGHT_ONLY_BITS, linear_names, to_dynamic_int8, to_weight_only
from granary.models.errors import CompressError
from granary.models.registry import ModelVersion, Registry

if TYPE_CHECKING:
    from granary.train.model import GPT


@dataclass(kw_only=True, frozen=True)
class CompressOptions:
    """Knobs of the compression methods.

    Attributes:
        sparsity: share of weights (magnitude) or rows (structured) pruned, in (0, 1).
        group_size: input columns per scale (weight-only quantization).
    """

    sparsity: float = 0.5
    group_size: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.sparsity < 1:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.group_size < 2 or self.group_size % 2:
            raise ValueError(f"group_size must be an even number >= 2, got {self.group_size}")


def _dynamic(model: GPT, opts: CompressOptions) -> nn.Module:
    return to_dynamic_int8(model)


def _int4(model: GPT, opts: CompressOptions) -> nn.Module:
    from granary.models.int4 import to_int4

    return to_int4(model, group_size=opts.group_size)


def _weight_only(bits: int) -> Callable[[GPT, CompressOptions], nn.Module]:
    def apply(model: GPT, opts: CompressOptions) -> nn.Module:
        return to_weight_only(model, bits=bits, group_size=opts.group_size)
    return apply


def _prune(structured: bool) -> Callable[[GPT, CompressOptions], nn.Module]:
    from torch.nn.utils import prune

    def apply(model: GPT, opts: CompressOptions) -> nn.Module:
        for name in linear_names(model):
            layer = model.get_submodule(name)
            if structured:
                prune.ln_structured(layer, "weight", amount=opts.sparsity, n=2, dim=0)
            else:
                prune.l1_unstructured(layer, "weight", amount=opts.sparsity)
            prune.remove(layer, "weight")  # make it permanent: a plain weight with zeros
        return model
    return apply


METHODS: dict[str, Callable[[GPT, CompressOptions], nn.Module]] = {
    "int8-dynamic": _dynamic,
    "int4": _int4,
    **{name: _weight_only(bits) for name, bits in WEIGHT_ONLY_BITS.items()},
    "pruned-magnitude": _prune(structured=False),
    "pruned-structured": _prune(structured=True),
}


def latency_ms(model: nn.Module, *, vocab_size: int, context: int, batch: int = 8, reps: int = 20) -> float:
    """Median CPU latency of one forward pass on a ``(batch, context)`` batch, in milliseconds."""
    x = torch.randint(0, vocab_size, (batch, context), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def sparsity_of(model: nn.Module) -> float:
    """Share of exactly-zero weights in the model's ``Linear`` layers."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def compress(registry: Registry, ref: str, method: str, *, options: CompressOptions | None = None,
             data: str | None = None, max_samples: int = 2000, purpose: str = "evaluation") -> ModelVersion:
    """Make ``method``'s version of model version ``ref`` and register it as the model's next version.

    Args:
        registry: the registry.
        ref: the original (``name@N`` or an alias).
        method: a key of :data:`METHODS`.
        options: sparsity, group size.
        data: a held-out tokens version to measure quality on (perplexity and accuracy of both versions,
            attached to both as evaluations); None skips it.
        max_samples: samples of ``data`` used for the quality measurement.
        purpose: declared purpose of the data read.

    Returns:
        The new version; its facts hold ``size_bytes``, ``size_ratio``, ``latency_ms`` (original and new) and
        ``quality`` (metrics of both) when ``data`` was given.
    """
    apply = METHODS.get(method)
    if apply is None:
        raise CompressError(f"unknown compression method {method!r}",
                            hint=f"one of {sorted(METHODS)}; distillation is `granary model distill`")
    opts = options or CompressOptions()
    original = registry.get(ref)
    if original.method != "registered" and original.method != "distilled":
        raise CompressError(f"{original.ref} is already compressed ({original.method})",
                            hint="compress the full-precision version it was made from")
    arch = original.facts["arch"]
    base = registry.load(original, purpose=purpose)
    before_ms = latency_ms(base, vocab_size=arch["vocab_size"], context=arch["context"])
    compressed = apply(registry.load(original, purpose=purpose), opts)  # type: ignore[arg-type]
    after_ms = latency_ms(compressed, vocab_size=arch["vocab_size"], context=arch["context"])
    facts: dict[str, Any] = {"options": opts.__dict__,
                             "latency_ms": {"original": round(before_ms, 3), "compressed": round(after_ms, 3)}}
    if method.startswith("pruned"):
        facts["sparsity"] = round(sparsity_of(compressed), 4)
    mv = registry.add_version(original.name, compressed, method=method, parent=original, facts=facts)
    mv.facts["size_ratio"] = round(original.facts["size_bytes"] / mv.facts["size_bytes"], 3)
    if data is not None:
        from granary.models.evaluate import evaluate, make_plan

        quality = {}
        for v in (original, mv):
            plan = make_plan(registry.store, v.ref, data, num_shards=1, max_samples=max_samples, purpose=purpose)
            quality[v.ref] = evaluate(registry.store, plan, inline=True)["metrics"]
        mv.facts["quality"] = quality
    registry.update_facts(mv)
    return mv
