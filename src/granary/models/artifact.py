"""Model files: a training checkpoint read back through the store, shape checks, safetensors and the HF layout.

A registered model version holds ``model.safetensors`` (Granary parameter names), ``config.json`` (the
architecture and how the weights are encoded) and, for full-precision versions of the reference GPT, ``hf/``: the
same weights in the Hugging Face ``GPT2LMHeadModel`` layout (``config.json`` + ``model.safetensors``) so
``transformers`` can load them (GELU exact, biases zero, untied head).
"""

from __future__ import annotations

import json
import shutil
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from granary.errors import MissingDependencyError
from granary.models.errors import ModelError, ShapeMismatchError
from granary.train.model import GPT
from granary.train.recipe import ModelConfig

if TYPE_CHECKING:
    from granary.store import Manifest, Store

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def model_config(data: Mapping[str, Any]) -> ModelConfig:
    """A :class:`ModelConfig` from a mapping, with a clear error for unknown or bad fields."""
    known = set(ModelConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelError(f"architecture has unknown field(s) {unknown}", hint=f"known fields: {sorted(known)}")
    try:
        cfg = ModelConfig(**dict(data))
    except TypeError as exc:
        raise ModelError(f"bad architecture: {exc}") from None
    if cfg.d_model % cfg.n_heads:
        raise ModelError(f"architecture: d_model {cfg.d_model} is not a multiple of n_heads {cfg.n_heads}")
    return cfg


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the reference GPT of ``cfg`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = GPT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def shape_problems(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Every difference between two name -> shape maps, one line each (empty when they agree)."""
    out = [f"{k}: checkpoint {list(found[k])}, architecture {list(v)}"
           for k, v in expected.items() if k in found and tuple(found[k]) != tuple(v)]
    out += [f"{k}: missing from the checkpoint" for k in expected if k not in found]
    out += [f"{k}: not in the architecture" for k in found if k not in expected]
    return out


def fetch_checkpoint(store: Store, ref: str, folder: Path, *, purpose: str | None) -> Manifest:
    """Copy a checkpoint version's files into ``folder`` through the store's read gate; returns its manifest."""
    manifest = store.open_version(ref, purpose=purpose)
    if manifest.kind != "checkpoint":
        raise ModelError(f"{ref} is a {manifest.kind} version, not a checkpoint",
                         hint="pass a training run's checkpoint dataset, e.g. demo-gpt-ckpt or demo-gpt-ckpt@<id>")
    folder.mkdir(parents=True, exist_ok=True)
    for entry in manifest.shards:
        (folder / str(entry.meta["name"])).write_bytes(store.object_bytes(entry))
    return manifest


def dcp_shapes(folder: Path, prefix: str = "model.") -> dict[str, tuple[int, ...]]:
    """Tensor shapes under ``prefix`` in a torch.distributed.checkpoint folder (read from its metadata only)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(folder)).read_metadata()
    return {k[len(prefix):]: tuple(v.size) for k, v in meta.state_dict_metadata.items()
            if k.startswith(prefix) and isinstance(v, TensorStorageMetadata)}


def load_dcp_model(folder: Path, cfg: ModelConfig) -> GPT:
    """The reference GPT of ``cfg`` with the weights of the checkpoint in ``folder`` (shapes already checked)."""
    import torch.distributed.checkpoint as dcp

    model = GPT(cfg)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(folder)), no_dist=True)
    model.load_state_dict(state["model"])
    return model.eval()


def checkpoint_model(store: Store, ref: str, *, arch: Mapping[str, Any] | None = None,
                     purpose: str | None = None) -> tuple[GPT, Manifest]:
    """Read checkpoint ``ref`` into the reference GPT, checking every tensor's shape against the architecture.

    Args:
        store: the store (the read goes through its gate with ``purpose``).
        ref: a checkpoint ref (``run-ckpt`` or ``run-ckpt@<id>``).
        arch: the declared architecture (default: the one the checkpoint's run recorded).
        purpose: declared purpose of the read.

    Raises:
        ShapeMismatchError: a tensor's shape differs, or one is missing or unexpected.
    """
    folder = store.settings.home / "staging" / f"model-{uuid.uuid4().hex[:12]}"
    try:
        manifest = fetch_checkpoint(store, ref, folder, purpose=purpose)
        declared = arch if arch is not None else manifest.metadata.get("model")
        if not declared:
            raise ModelError(f"checkpoint {ref} records no architecture", hint="declare it with --arch FILE")
        cfg = model_config(declared)
        problems = shape_problems(expected_shapes(cfg), dcp_shapes(folder))
        if problems:
            raise ShapeMismatchError(ref, problems)
        return load_dcp_model(folder, cfg), manifest
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def save_file(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors (contiguous CPU copies)."""
    try:
        from safetensors.torch import save_file as save
    except ImportError:
        raise MissingDependencyError("safetensors", "models") from None
    save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


def load_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file."""
    try:
        from safetensors.torch import load_file as load
    except ImportError:
        raise MissingDependencyError("safetensors", "models") from None
    return dict(load(str(path)))


def hf_layout(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The reference GPT's weights renamed to ``GPT2LMHeadModel`` (``Conv1D`` weights are transposed; q, k, v
    are concatenated into ``c_attn``; the biases GPT-2 has and this model lacks are zeros)."""
    d, out = cfg.d_model, {}
    out["transformer.wte.weight"] = state["tok_emb.weight"]
    out["transformer.wpe.weight"] = state["pos_emb.weight"]
    for i in range(cfg.n_layers):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[h + theirs + ".weight"] = state[p + ours + ".weight"]
            out[h + theirs + ".bias"] = state[p + ours + ".bias"]
        qkv = torch.cat([state[p + f"attn.{w}.weight"] for w in ("wq", "wk", "wv")], dim=0)
        out[h + "attn.c_attn.weight"] = qkv.t()
        out[h + "attn.c_attn.bias"] = torch.zeros(3 * d)
        out[h + "attn.c_proj.weight"] = state[p + "attn.wo.weight"].t()
        out[h + "attn.c_proj.bias"] = torch.zeros(d)
        out[h + "mlp.c_fc.weight"] = state[p + "mlp.up.weight"].t()
        out[h + "mlp.c_fc.bias"] = torch.zeros(cfg.mlp_ratio * d)
        out[h + "mlp.c_proj.weight"] = state[p + "mlp.down.weight"].t()
        out[h + "mlp.c_proj.bias"] = torch.zeros(d)
    out["transformer.ln_f.weight"] = state["norm.weight"]
    out["transformer.ln_f.bias"] = state["norm.bias"]
    out["lm_head.weight"] = state["head.weight"]
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
              "n_positions": cfg.context, "n_embd": d, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
              "n_inner": cfg.mlp_ratio * d, "activation_function": "gelu", "resid_pdrop": 0.0, "embd_pdrop": 0.0,
              "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False,
              "scale_attn_weights": True}
    return out, config


def from_hf_layout(tensors: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Inverse of :func:`hf_layout` (the zero biases are dropped)."""
    d, out = cfg.d_model, {}
    out["tok_emb.weight"] = tensors["transformer.wte.weight"]
    out["pos_emb.weight"] = tensors["transformer.wpe.weight"]
    for i in range(cfg.n_layers):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[p + ours + ".weight"] = tensors[h + theirs + ".weight"]
            out[p + ours + ".bias"] = tensors[h + theirs + ".bias"]
        q, k, v = tensors[h + "attn.c_attn.weight"].t().split(d, dim=0)
        out[p + "attn.wq.weight"], out[p + "attn.wk.weight"], out[p + "attn.wv.weight"] = q, k, v
        out[p + "attn.wo.weight"] = tensors[h + "attn.c_proj.weight"].t()
        out[p + "mlp.up.weight"] = tensors[h + "mlp.c_fc.weight"].t()
        out[p + "mlp.down.weight"] = tensors[h + "mlp.c_proj.weight"].t()
    out["norm.weight"] = tensors["transformer.ln_f.weight"]
    out["norm.bias"] = tensors["transformer.ln_f.bias"]
    out["head.weight"] = tensors["lm_head.weight"]
    return out


def write_version_files(folder: Path, tensors: Mapping[str, torch.Tensor], config: dict[str, Any], *,
                        hf: tuple[dict[str, torch.Tensor], dict[str, Any]] | None) -> list[Path]:
    """Write a model version's files into ``folder``; returns them (relative names are their store names)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / MODEL_FILE, metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    files = [folder / MODEL_FILE, folder / CONFIG_FILE]
    if hf is not None:
        (folder / "hf").mkdir(exist_ok=True)
        save_file(hf[0], folder / "hf" / MODEL_FILE, metadata={"format": "pt"})
        (folder / "hf" / CONFIG_FILE).write_text(json.dumps(hf[1], indent=2, sort_keys=True))
        files += [folder / "hf" / MODEL_FILE, folder / "hf" / CONFIG_FILE]
    return files


def arch_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The architecture as plain data."""
    return asdict(cfg)
