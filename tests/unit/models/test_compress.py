"""Compression methods and their encodings: int4 packing, weight-only error bounds, dynamic int8 round trip,
pruning sparsity, distillation; each makes a new version with its measurements."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from granary.models.codec import WeightOnlyLinear, decode, encode, pack_int4, to_dynamic_int8, unpack_int4
from granary.models.compress import CompressOptions, compress
from granary.models.errors import CompressError
from granary.models.registry import Registry
from granary.train.model import GPT
from granary.train.recipe import ModelConfig
from tests.unit.models.conftest import Trained


@given(st.lists(st.integers(-7, 7), min_size=1, max_size=64))
def test_int4_packing_round_trips(values: list[int]) -> None:
    if len(values) % 2:
        values = [*values, 0]
    q = torch.tensor([values, values[::-1]], dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (2, len(values) // 2)
    assert torch.equal(unpack_int4(packed, len(values)), q)


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_error_is_within_half_a_step(bits: int) -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    layer = WeightOnlyLinear(w, bits=bits, group_size=32)
    step = w.reshape(16, 2, 32).abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
    err = (layer.dequantized() - w).reshape(16, 2, 32).abs()
    assert bool((err <= step / 2 * 1.01 + 1e-3).all())  # + fp16 rounding of the scales


def test_dynamic_int8_decodes_to_the_same_quantized_model() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, context=8)).eval()
    quantized = to_dynamic_int8(model)
    tensors, config, hf = encode(quantized, "int8-dynamic")
    assert hf is None and tensors["blocks.0.attn.wq.qweight"].dtype == torch.int8
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(decode(tensors, config)(x), quantized(x))


def test_every_method_makes_a_new_measured_version(trained: Trained) -> None:
    reg = Registry(trained.store())
    base = reg.register(trained.checkpoint, "comp")
    facts = {}
    for method in ("int8-dynamic", "int8-weight", "int4-weight", "pruned-magnitude", "pruned-structured"):
        mv = compress(reg, base.ref, method, data=trained.heldout, max_samples=200)
        assert mv.parent == base.version and mv.method == method
        assert set(mv.facts["latency_ms"]) == {"original", "compressed"}
        assert set(mv.facts["quality"]) == {base.ref, mv.ref}
        facts[method] = mv.facts
        x = torch.randint(0, 64, (2, 16))
        assert reg.load(mv)(x).shape == (2, 16, 64)
    assert facts["int8-dynamic"]["size_ratio"] >= 2.0
    assert facts["int4-weight"]["size_bytes"] < facts["int8-weight"]["size_bytes"] < base.facts["size_bytes"]
    assert facts["pruned-magnitude"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    q8 = facts["int8-weight"]["quality"]
    assert q8[f"comp@{base.version + 2}"]["perplexity"] == pytest.approx(q8[base.ref]["perplexity"], rel=0.02)
    with pytest.raises(CompressError, match="already compressed"):
        compress(reg, "comp@2", "int4-weight")
    with pytest.raises(CompressError, match="unknown compression method"):
        compress(reg, base.ref, "int3")
    with pytest.raises(ValueError, match="sparsity"):
        CompressOptions(sparsity=1.5)


def test_distillation_trains_a_smaller_registered_student(trained: Trained) -> None:
    from granary.models.distill import DistillRecipe, distill
    from granary.models.evaluate import evaluate, make_plan

    store = trained.store()
    reg = Registry(store)
    teacher = reg.register(trained.checkpoint, "dist")
    student = distill(reg, teacher.ref, DistillRecipe(student={"d_model": 16, "n_layers": 1}, data=trained.data,
                                                      steps=150))
    assert student.method == "distilled" and student.parent == teacher.version
    assert student.facts["arch"]["d_model"] == 16
    assert student.facts["params"]["student"] < student.facts["params"]["teacher"] / 3
    manifest = store.manifest(f"model.dist@{student.store_version}")
    assert store.resolve(trained.data).id in manifest.lineage["inputs"]
    ppl = evaluate(store, make_plan(store, student.ref, trained.heldout, num_shards=1), inline=True)
    assert ppl["metrics"]["perplexity"] < 20  # learned something: uniform over 64 tokens is 64
