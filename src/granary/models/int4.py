"""Weight-only int4: group-wise asymmetric quantization of ``Linear`` weights, two 4-bit values per byte.

Each row of a weight is cut into groups of ``group_size`` input columns (32, 64 or 128 are typical); a group keeps
its minimum ``m`` and a scale ``s = (max - m) / 15`` (both float16) and every weight ``w`` of it becomes
``q = round((w - m) / s)`` in ``[0, 15]``, so ``w ≈ q * s + m``. Two values share a byte: column ``2i`` in the
low nibble, ``2i + 1`` in the high one. At ``group_size`` 32 that is 0.625 bytes per weight (6.4x smaller than
float32) before the float layers (embeddings, norms) that stay as they are.

:class:`Int4Linear` computes with torch's own CPU kernel for int4 weights (``aten._weight_int4pack_mm_for_cpu``,
bfloat16 activations, repacked at load time) where this torch has it and the shapes suit it, else by dequantizing
the weight for each call. torchao's int4 layouts do not run on this CPU build (docs/models.md).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from granary.models.errors import CompressError

log = logging.getLogger(__name__)
LEVELS = 15  # q in [0, 15]
KERNEL_GROUP_SIZES = (32, 64, 128, 256)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Values in ``[0, 15]`` (any integer dtype, even last dimension) packed two per uint8."""
    u = q.to(torch.uint8)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles` (uint8 values in ``[0, 15]``, last dimension doubled)."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def quantize(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(packed, scales, mins)`` of a 2-D float weight: packed ``(out, in / 2)`` uint8, scales and mins
    ``(out, in / group_size)`` float16."""
    out_f, in_f = weight.shape
    check_group_size(in_f, group_size)
    groups = weight.detach().float().reshape(out_f, in_f // group_size, group_size)
    mins = groups.amin(dim=-1, keepdim=True).to(torch.float16).float()  # what is stored is what dequantizes
    scales = ((groups.amax(dim=-1, keepdim=True) - mins) / LEVELS).clamp(min=1e-8).to(torch.float16).float()
    q = torch.clamp(torch.round((groups - mins) / scales), 0, LEVELS).reshape(out_f, in_f)
    return pack_nibbles(q), scales.squeeze(-1).to(torch.float16), mins.squeeze(-1).to(torch.float16)


def dequantize(packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int) -> torch.Tensor:
    """The float32 weight that :func:`quantize` encoded."""
    q = unpack_nibbles(packed).float()
    out_f, in_f = q.shape
    groups = q.reshape(out_f, in_f // group_size, group_size)
    return (groups * scales.float().unsqueeze(-1) + mins.float().unsqueeze(-1)).reshape(out_f, in_f)


def check_group_size(in_features: int, group_size: int) -> None:
    if group_size < 2 or group_size % 2:
        raise CompressError(f"int4 group_size must be an even number >= 2, got {group_size}")
    if in_features % group_size:
        raise CompressError(f"in_features {in_features} is not a multiple of the int4 group_size {group_size}",
                            hint="choose a group size that divides the model width (32, 64 or 128 for the "
                                 "reference GPT's usual widths), e.g. --group-size 16 for d_model 16")


@functools.cache
def kernel_available() -> bool:
    """Whether this torch runs its int4 weight kernel on CPU (checked once on a small example)."""
    if not (hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
            and hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")):
        return False
    try:
        q = torch.arange(32 * 64, dtype=torch.int32).reshape(32, 64) % 16
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.ones(2, 32, 2, dtype=torch.bfloat16)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(torch.ones(1, 64, dtype=torch.bfloat16), packed, 32, sz)
    except (RuntimeError, NotImplementedError) as exc:
        log.info("torch's int4 CPU kernel is not usable here (%s); int4 layers dequantize per call", exc)
        return False
    return tuple(out.shape) == (1, 32)


class Int4Linear(nn.Module):
    """A bias-free ``Linear`` whose weight is stored as group-wise asymmetric int4 (see the module docstring).

    Args:
        in_features: input width (a multiple of ``group_size``).
        out_features: output width.
        group_size: input columns sharing one scale and minimum.
    """

    use_kernel = True  # set False (class-wide) to compute by dequantizing, e.g. to compare the two paths

    def __init__(self, in_features: int, out_features: int, *, group_size: int) -> None:
        super().__init__()
        check_group_size(in_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.qweight: torch.Tensor
        self.scales: torch.Tensor
        self.mins: torch.Tensor
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16))
        self.register_buffer("mins", torch.zeros(out_features, groups, dtype=torch.float16))
        self._kernel: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, *, group_size: int) -> Int4Linear:
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, group_size=group_size)
        layer.qweight, layer.scales, layer.mins = quantize(weight, group_size)
        return layer

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._kernel = None  # repack from the loaded weights on the next call

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.qweight, self.scales, self.mins, self.group_size)

    def _kernel_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._kernel is None:
            q = unpack_nibbles(self.qweight).to(torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            # the kernel computes (q - 8) * scale + zero: our minimum m is zero - 8 * scale
            scales = self.scales.float()
            zeros = self.mins.float() + 8 * scales
            sz = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
            self._kernel = (packed, sz)
        return self._kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernel and self.group_size in KERNEL_GROUP_SIZES and x.device.type == "cpu" \
                and not torch.is_grad_enabled() and kernel_available():
            packed, sz = self._kernel_weights()
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, self.group_size, sz)
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.dequantized().to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


def linear_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(owner, attribute, layer) of every ``nn.Linear`` in ``model``."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            parent, _, child = name.rpartition(".")
            out.append((model.get_submodule(parent) if parent else model, child, module))
    return out


def to_int4(model: nn.Module, *, group_size: int = 32) -> nn.Module:
    """Replace every bias-free ``nn.Linear`` of ``model`` (in place) by an :class:`Int4Linear`."""
    layers = linear_layers(model)
    for owner, child, linear in layers:
        if linear.bias is not None:
            raise CompressError(f"{type(owner).__name__}.{child} has a bias; int4 here quantizes bias-free layers")
        check_group_size(linear.in_features, group_size)
    for owner, child, linear in layers:
        setattr(owner, child, Int4Linear.from_weight(linear.weight, group_size=group_size))
    return model


def int4_shell(model: nn.Module, *, group_size: int) -> nn.Module:
    """Replace every ``nn.Linear`` by an empty :class:`Int4Linear` of its shape (to load stored int4 weights)."""
    for owner, child, linear in linear_layers(model):
        setattr(owner, child, Int4Linear(linear.in_features, linear.out_features, group_size=group_size))
    return model
