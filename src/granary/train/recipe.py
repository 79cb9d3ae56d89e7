"""Training recipes: keyword-only frozen config dataclasses, and YAML files mapped onto them with clear errors.

A recipe file is a YAML mapping whose keys are the fields of :class:`Recipe` (``model``, ``data``, ``optim``,
``parallel``, ``checkpoint``, ``fault`` are nested mappings). An unknown key, a wrong type or a missing required
field is a :class:`~granary.errors.TrainError` naming the file, the line and the dotted field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from granary.errors import TrainError


@dataclass(kw_only=True, frozen=True)
class ModelConfig:
    """The reference GPT (see :mod:`granary.train.model`); ``context`` is tokens the model sees per sample."""

    vocab_size: int = 256
    d_model: int = 32
    n_layers: int = 2
    n_heads: int = 2
    context: int = 32
    mlp_ratio: int = 4
    dropout: float = 0.0
    activation_checkpointing: bool = False


@dataclass(kw_only=True, frozen=True)
class DataConfig:
    """Where batches come from: a tokens version read through :class:`granary.stream.StreamingDataset`.

    Samples are ``context + 1`` tokens (inputs and shifted labels). ``batch_size`` is per rank and micro-step.
    """

    dataset: str
    batch_size: int = 4
    seed: int = 0
    shuffle: str = "global"
    purpose: str = "training"
    eval_dataset: str | None = None
    eval_every: int = 0
    eval_batches: int = 2


@dataclass(kw_only=True, frozen=True)
class OptimConfig:
    """AdamW with linear warmup then a cosine (or constant) schedule, and gradient-norm clipping (0: off)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass(kw_only=True, frozen=True)
class ParallelConfig:
    """How ranks share the work (see docs/train.md for which modes run on gloo/CPU)."""

    mode: Literal["ddp", "fsdp", "tp", "fsdp_tp", "pp", "diloco", "param_server", "single"] = "ddp"
    tp_size: int = 2
    grad_accum: int = 1
    mixed_precision: Literal["none", "bf16", "fp16"] = "none"
    fp16_init_scale: float = 65536.0
    fp16_growth_interval: int = 2000
    comm_hook: Literal["none", "bf16", "fp16", "powersgd"] = "none"
    powersgd_rank: int = 4
    diloco_h: int = 50
    diloco_outer_lr: float = 0.7
    diloco_outer_momentum: float = 0.9
    diloco_delay: int = 0
    ps_staleness: int = 4
    pp_schedule: Literal["gpipe", "1f1b"] = "gpipe"
    pp_microbatches: int = 2
    compile: bool = False


@dataclass(kw_only=True, frozen=True)
class CheckpointConfig:
    """Checkpoints as versions of a ``checkpoint`` dataset in the store (default name ``<run>-ckpt``).

    ``async_save`` writes in a background thread and commits at the next checkpoint (or the end of the run).
    Retention (see :mod:`granary.train.retention`): ``keep_last`` newest checkpoints are kept (0: all), and also
    every checkpoint whose step is a multiple of ``keep_every`` (0: none); the others are retired through the
    store after each commit, and ``granary gc`` frees their objects.
    """

    dataset: str | None = None
    every: int = 50
    resume: bool = True
    async_save: bool = False
    keep_last: int = 0
    keep_every: int = 0


@dataclass(kw_only=True, frozen=True)
class FaultConfig:
    """The watchdog and the loss policy.

    ``step_timeout_s`` bounds one step (a hung collective or a stalled loader); ``collective_timeout_s`` is the
    process group's own timeout. ``nan_policy``: ``raise`` stops the run, ``skip`` drops the step's update.
    ``spike_factor`` > 0 treats a loss above that many times the running mean as a NaN.
    """

    step_timeout_s: float = 600.0
    collective_timeout_s: float = 300.0
    nan_policy: Literal["raise", "skip"] = "raise"
    spike_factor: float = 0.0


@dataclass(kw_only=True, frozen=True)
class Recipe:
    """One training run: what to train, on what, how, for how long."""

    name: str
    data: DataConfig
    steps: int = 100
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    log_every: int = 1
    run_dir: str | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        checks = [
            ("steps", self.steps >= 1), ("log_every", self.log_every >= 1), ("threads", self.threads >= 1),
            ("data.batch_size", self.data.batch_size >= 1), ("parallel.grad_accum", self.parallel.grad_accum >= 1),
            ("checkpoint.every", self.checkpoint.every >= 0), ("model.n_layers", self.model.n_layers >= 1),
            ("checkpoint.keep_last", self.checkpoint.keep_last >= 0),
            ("checkpoint.keep_every", self.checkpoint.keep_every >= 0),
            ("parallel.fp16_init_scale", self.parallel.fp16_init_scale > 0),
            ("parallel.diloco_delay", 0 <= self.parallel.diloco_delay < max(1, self.parallel.diloco_h)),
            ("parallel.ps_staleness", self.parallel.ps_staleness >= 0),
            ("parallel.fp16_growth_interval", self.parallel.fp16_growth_interval >= 1),
            ("model.d_model", self.model.d_model % self.model.n_heads == 0),
        ]
        for name, ok in checks:
            if not ok:
                raise TrainError(f"recipe field {name} has a bad value",
                                 hint="steps, batch sizes and layers are >= 1; d_model is a multiple of n_heads")

    @property
    def checkpoint_dataset(self) -> str:
        """The store dataset that holds this run's checkpoints."""
        return self.checkpoint.dataset or f"{self.name}-ckpt"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_hash(self) -> str:
        """A short hash of the model shape (a checkpoint of another shape is refused on resume)."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self.model), sort_keys=True).encode()).hexdigest()[:16]


# -- mapping plain data (YAML, JSON, dicts) onto the dataclasses ------------------------------------------------
def recipe_from_dict(data: Any, *, source: str = "<dict>", lines: dict[str, int] | None = None) -> Recipe:
    """Build a :class:`Recipe` from nested dicts; errors name ``source``, the line (if known) and the field."""
    return typing.cast(Recipe, _build(Recipe, data, "", source, lines or {}))


def build_dataclass(cls: type, data: Any, *, source: str = "<dict>") -> Any:
    """Build any config dataclass from nested dicts with the same checks and errors as a recipe."""
    return _build(cls, data, "", source, {})


def load_recipe(path: str | Path) -> Recipe:
    """Read a YAML recipe file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TrainError(f"cannot read recipe {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as exc:
        raise TrainError(f"{path}: not valid YAML: {exc}") from None
    return recipe_from_dict(data, source=str(path), lines=lines)


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    import yaml

    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = f"{prefix}{key.value}"
            out[name] = key.start_mark.line + 1
            out.update(_key_lines(value, name + "."))
    return out


def _where(source: str, lines: dict[str, int], name: str) -> str:
    line = lines.get(name)
    return f"{source}:{line}" if line else source


def _build(cls: type, data: Any, prefix: str, source: str, lines: dict[str, int]) -> Any:
    label = prefix.rstrip(".") or "the recipe"
    if not isinstance(data, dict):
        raise TrainError(f"{_where(source, lines, prefix.rstrip('.'))}: {label} must be a mapping, "
                         f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = prefix + str(unknown[0])
        raise TrainError(f"{_where(source, lines, name)}: unknown field {name!r}",
                         hint=f"fields of {label}: {', '.join(sorted(fields))}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, prefix + key, source, lines)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TrainError(f"{source}: missing required field {prefix + missing[0]!r}")
    try:
        return cls(**kwargs)
    except TrainError as exc:
        raise TrainError(f"{source}: {exc}") from None


def _convert(hint: Any, value: Any, name: str, source: str, lines: dict[str, int]) -> Any:
    where = _where(source, lines, name)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type, hint), value, name + ".", source, lines)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise TrainError(f"{where}: field {name!r} is {value!r}; allowed: {', '.join(map(str, allowed))}")
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint, True)
    if not ok:
        raise TrainError(f"{where}: field {name!r} must be {getattr(hint, '__name__', hint)}, got {value!r}")
    return float(value) if hint is float else value
