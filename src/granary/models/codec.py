"""How a model version's weights are encoded in safetensors, per method, and decoded back into a module.

``registered``, pruned and distilled versions store plain float tensors (and the HF layout). ``int8-dynamic``
stores each ``Linear``'s int8 weight with its per-tensor scale and zero point, and is rebuilt with
``torch.ao.quantization.quantize_dynamic`` (int8 activations quantized at run time). ``int8-weight`` and
``int4-weight`` store group-wise symmetric integer weights (int4: two per byte) in :class:`WeightOnlyLinear`,
which dequantizes on the fly. ``int4`` stores group-wise asymmetric int4 (scale and minimum per group) in
:class:`granary.models.int4.Int4Linear`, which runs torch's int4 CPU kernel where it can.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from granary.models.artifact import arch_dict, hf_layout, model_config
from granary.models.errors import CompressError
from granary.train.model import GPT

FLOAT_METHODS = ("registered", "pruned-magnitude", "pruned-structured", "distilled")
WEIGHT_ONLY_BITS = {"int8-weight": 8, "int4-weight": 4}
METHODS = (*FLOAT_METHODS, "int8-dynamic", *WEIGHT_ONLY_BITS, "int4")


@contextlib.contextmanager
def quiet_quantization() -> Iterator[None]:
    """torch.ao.quantization warns that it moves to torchao; the eager dynamic path still works in this torch."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        yield


class WeightOnlyLinear(nn.Module):
    """A bias-free ``Linear`` whose weight is stored as signed ``bits``-bit integers, one scale per group.

    Args:
        weight: the float weight (out_features, in_features).
        bits: 8 or 4.
        group_size: input columns sharing one scale (``in_features`` must be a multiple).
    """

    def __init__(self, weight: torch.Tensor, *, bits: int, group_size: int) -> None:
        super().__init__()
        out_f, in_f = weight.shape
        if in_f % group_size:
            raise CompressError(f"in_features {in_f} is not a multiple of group_size {group_size}")
        self.in_features, self.out_features, self.bits, self.group_size = in_f, out_f, bits, group_size
        qmax = 2 ** (bits - 1) - 1
        groups = weight.detach().float().reshape(out_f, in_f // group_size, group_size)
        scales = groups.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
        q = torch.clamp(torch.round(groups / scales), -qmax, qmax).to(torch.int8).reshape(out_f, in_f)
        self.qweight: torch.Tensor
        self.scales: torch.Tensor
        self.register_buffer("qweight", pack_int4(q) if bits == 4 else q)
        self.register_buffer("scales", scales.squeeze(-1).to(torch.float16))

    def dequantized(self) -> torch.Tensor:
        q = unpack_int4(self.qweight, self.in_features) if self.bits == 4 else self.qweight
        groups = q.float().reshape(self.out_features, -1, self.group_size)
        return (groups * self.scales.float().unsqueeze(-1)).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized().to(x.dtype))


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit values (int8 tensor in [-7, 7], even last dim) packed two per uint8."""
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`."""
    lo = (packed & 0xF).to(torch.int16)
    hi = (packed >> 4).to(torch.int16)
    both = torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], cols)
    return torch.where(both > 7, both - 16, both).to(torch.int8)


def linear_names(model: nn.Module) -> list[str]:
    """Names of the ``Linear`` layers compression acts on (attention, MLP and the LM head)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def to_weight_only(model: GPT, *, bits: int, group_size: int = 32) -> GPT:
    """Replace every ``Linear`` of ``model`` (in place) by a :class:`WeightOnlyLinear`."""
    for name in linear_names(model):
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        linear = getattr(owner, child)
        if linear.bias is not None:
            raise CompressError(f"{name} has a bias; weight-only quantization here supports bias-free layers")
        setattr(owner, child, WeightOnlyLinear(linear.weight, bits=bits, group_size=group_size))
    return model


def to_dynamic_int8(model: nn.Module) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` of every ``Linear`` (int8 weights and activations)."""
    from torch.ao.quantization import quantize_dynamic

    with quiet_quantization():
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def encode(model: nn.Module, method: str) -> tuple[dict[str, torch.Tensor], dict[str, Any],
                                                    tuple[dict[str, torch.Tensor], dict[str, Any]] | None]:
    """(tensors, config, HF layout or None) of a model made by ``method``."""
    if method not in METHODS:
        raise CompressError(f"unknown method {method!r}", hint=f"one of {list(METHODS)}")
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise CompressError("the registry stores the reference GPT (granary.train.model.GPT) and its compressions")
    config: dict[str, Any] = {"arch": arch_dict(cfg), "method": method}
    if method == "int8-dynamic":
        return _encode_dynamic(model), config, None
    state = {k: v for k, v in model.state_dict().items()}
    if method in WEIGHT_ONLY_BITS:
        config["group_size"] = next(m.group_size for m in model.modules() if isinstance(m, WeightOnlyLinear))
        return state, config, None
    if method == "int4":
        from granary.models.int4 import Int4Linear

        config["group_size"] = next(m.group_size for m in model.modules() if isinstance(m, Int4Linear))
        return state, config, None
    return state, config, hf_layout(state, cfg)


def _encode_dynamic(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    linear = set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and hasattr(module, "_packed_params"):  # a dynamic quantized Linear
            w = module.weight()
            out[f"{name}.qweight"] = w.int_repr()
            out[f"{name}.qscale"] = torch.tensor([w.q_scale()], dtype=torch.float64)
            out[f"{name}.qzero"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
            linear.add(name)
    for key, value in model.state_dict().items():
        owner = key.rpartition(".")[0].removesuffix("._packed_params")
        if owner not in linear and isinstance(value, torch.Tensor):
            out[key] = value
    return out


def decode(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> nn.Module:
    """The inference module of a stored version (eval mode)."""
    cfg = model_config(config["arch"])
    method = str(config["method"])
    model = GPT(cfg)
    if method in FLOAT_METHODS:
        model.load_state_dict(dict(tensors))
        return model.eval()
    if method in WEIGHT_ONLY_BITS:
        to_weight_only(model, bits=WEIGHT_ONLY_BITS[method], group_size=int(config["group_size"]))
        model.load_state_dict(dict(tensors))
        return model.eval()
    if method == "int4":
        from granary.models.int4 import int4_shell

        int4_shell(model, group_size=int(config["group_size"]))
        model.load_state_dict(dict(tensors))
        return model.eval()
    if method == "int8-dynamic":
        floats = {k: v for k, v in tensors.items() if not k.endswith((".qweight", ".qscale", ".qzero"))}
        model.load_state_dict(floats, strict=False)
        qmodel = to_dynamic_int8(model.eval())
        with quiet_quantization():
            for name in linear_names(model):
                module: Any = qmodel.get_submodule(name)
                q = torch._make_per_tensor_quantized_tensor(tensors[f"{name}.qweight"],
                                                            float(tensors[f"{name}.qscale"].item()),
                                                            int(tensors[f"{name}.qzero"].item()))
                module.set_weight_bias(q, None)
        return qmodel.eval()
    raise CompressError(f"stored version has unknown method {method!r}")
