"""Weight-only int4 (granary.models.int4): nibble packing, the error bound of group-wise asymmetric quantization,
torch's CPU kernel against the dequantizing path, bad group sizes, and a registered int4 version that loads back
to the same outputs, 5x+ smaller in its layers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from granary.models.compress import compress
from granary.models.errors import CompressError
from granary.models.int4 import (
    Int4Linear,
    dequantize,
    kernel_available,
    pack_nibbles,
    quantize,
    to_int4,
    unpack_nibbles,
)
from granary.models.registry import Registry
from granary.train.model import GPT
from granary.train.recipe import ModelConfig
from tests.unit.models.conftest import Trained


@given(st.lists(st.integers(0, 15), min_size=1, max_size=64))
def test_nibbles_round_trip(values: list[int]) -> None:
    if len(values) % 2:
        values = [*values, 15]
    q = torch.tensor([values, values[::-1]], dtype=torch.uint8)
    packed = pack_nibbles(q)
    assert packed.dtype == torch.uint8 and packed.shape == (2, len(values) // 2)
    assert torch.equal(unpack_nibbles(packed), q)
    assert int(packed[0, 0]) == values[0] | (values[1] << 4)  # even column low, odd column high


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_error_is_within_half_a_step_of_its_group(group_size: int) -> None:
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(group_size)) * 0.05 + 0.01
    packed, scales, mins = quantize(w, group_size)
    assert packed.shape == (24, 128) and scales.shape == mins.shape == (24, 256 // group_size)
    assert scales.dtype == mins.dtype == torch.float16
    err = (dequantize(packed, scales, mins, group_size) - w).reshape(24, -1, group_size).abs()
    step = scales.float().unsqueeze(-1)
    assert bool((err <= step / 2 + 1e-4).all())
    # a group's minimum and maximum are (nearly) exact: the asymmetric grid spans [min, max]
    deq = dequantize(packed, scales, mins, group_size).reshape(24, -1, group_size)
    groups = w.reshape(24, -1, group_size)
    assert torch.allclose(deq.amin(-1), groups.amin(-1), atol=1e-4)


def test_constant_group_does_not_divide_by_zero() -> None:
    w = torch.full((2, 32), 0.25)
    deq = dequantize(*quantize(w, 32), 32)
    assert torch.allclose(deq, w, atol=1e-3) and bool(torch.isfinite(deq).all())


@pytest.mark.skipif(not kernel_available(),
                    reason="this torch has no int4 CPU kernel (aten._weight_int4pack_mm_for_cpu)")
def test_kernel_matches_the_dequantizing_path() -> None:
    torch.manual_seed(0)
    layer = Int4Linear.from_weight(torch.randn(48, 128) * 0.1, group_size=64)
    x = torch.randn(3, 5, 128)
    with torch.inference_mode():
        fast = layer(x)
        Int4Linear.use_kernel = False
        try:
            slow = layer(x)
        finally:
            Int4Linear.use_kernel = True
    assert fast.shape == slow.shape == (3, 5, 48) and fast.dtype == torch.float32
    # the kernel takes bfloat16 activations: agreement to bfloat16 precision
    assert torch.allclose(fast, slow, rtol=2e-2, atol=2e-2 * float(slow.abs().max()))
    assert not torch.equal(fast, torch.zeros_like(fast))


def test_bad_group_sizes_are_refused_with_what_to_do() -> None:
    model = GPT(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, context=8))
    with pytest.raises(CompressError, match="not a multiple of the int4 group_size 32") as info:
        to_int4(model, group_size=32)
    assert "--group-size 16" in (info.value.hint or "")
    assert not any(isinstance(m, Int4Linear) for m in model.modules())  # nothing replaced half-way
    with pytest.raises(CompressError, match="even number"):
        Int4Linear(16, 8, group_size=3)


def test_int4_version_loads_back_identical_and_smaller(trained: Trained) -> None:
    reg = Registry(trained.store())
    base = reg.register(trained.checkpoint, "q4")
    mv = compress(reg, base.ref, "int4", data=trained.heldout, max_samples=200)
    assert mv.method == "int4" and mv.parent == base.version and mv.facts["options"]["group_size"] == 32
    q = mv.facts["quality"]
    assert q[mv.ref]["perplexity"] == pytest.approx(q[base.ref]["perplexity"], rel=0.1)
    loaded = reg.load(mv)
    layers = [m for m in loaded.modules() if isinstance(m, Int4Linear)]
    assert layers and all(m.qweight.dtype == torch.uint8 for m in layers)
    fresh = to_int4(reg.load(base), group_size=32).eval()
    x = torch.randint(0, 64, (2, 16))
    with torch.inference_mode():
        assert torch.equal(loaded(x), fresh(x))
    float_linear = sum(m.in_features * m.out_features * 4 for m in layers)
    int4_linear = sum(m.qweight.numel() + 2 * m.scales.numel() + 2 * m.mins.numel() for m in layers)
    assert float_linear / int4_linear == pytest.approx(6.4)
    assert mv.facts["size_bytes"] < base.facts["size_bytes"]
