"""Pipeline specs: an ordered list of step configs (Python or YAML), split into local and global segments."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from granary.curate.errors import PipelineSpecError
from granary.curate.readers import ReaderConfig
from granary.curate.step import STEPS, StepConfig


def _load_steps() -> None:
    """Import every step module so the registry is complete."""
    import granary.curate.balance
    import granary.curate.cleaners.repeated
    import granary.curate.cleaners.text
    import granary.curate.dedup.exact
    import granary.curate.dedup.near
    import granary.curate.filters.c4
    import granary.curate.filters.gopher
    import granary.curate.filters.langid
    import granary.curate.pii.step  # noqa: F401


@dataclass(kw_only=True, frozen=True)
class PipelineSpec:
    """A curation pipeline.

    Attributes:
        name: a short name recorded in lineage.
        steps: the step configs, in order.
        reader: where documents come from when the caller gives no input.
        batch_rows: at most this many documents per batch inside a task.
        batch_bytes: at most about this many bytes of text per batch (cache-sized batches run faster).
        text_column: the column holding the text.
    """

    name: str = "pipeline"
    steps: tuple[StepConfig, ...] = ()
    reader: ReaderConfig | None = None
    batch_rows: int = 8192
    batch_bytes: int = 1 << 20
    text_column: str = "text"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.steps:
            raise PipelineSpecError(self.name, "a pipeline needs at least one step")
        if self.batch_rows < 1:
            raise PipelineSpecError(f"{self.name}.batch_rows", "must be >= 1")
        if self.batch_bytes < 1024:
            raise PipelineSpecError(f"{self.name}.batch_bytes", "must be >= 1024")
        labels = [s.display for s in self.steps]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise PipelineSpecError(self.name, f"step names repeat: {dup}",
                                    hint="give repeated steps distinct `label`s")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "pipeline") -> PipelineSpec:
        """Build from a mapping shaped like the YAML file."""
        if not isinstance(data, dict):
            raise PipelineSpecError(where, f"expected a mapping, got {type(data).__name__}")
        unknown = set(data) - {"name", "steps", "reader", "batch_rows", "batch_bytes", "text_column", "description"}
        if unknown:
            raise PipelineSpecError(where, f"unknown keys {sorted(unknown)}")
        raw_steps = data.get("steps") or []
        if not isinstance(raw_steps, list):
            raise PipelineSpecError(f"{where}.steps", "must be a list of steps")
        steps = tuple(step_from_dict(s, where=f"{where}.steps[{i}]") for i, s in enumerate(raw_steps))
        reader = None
        if data.get("reader") is not None:
            reader = _build(ReaderConfig, dict(data["reader"]), f"{where}.reader")
        return cls(name=str(data.get("name", "pipeline")), steps=steps, reader=reader,
                   batch_rows=int(data.get("batch_rows", 8192)), batch_bytes=int(data.get("batch_bytes", 1 << 20)),
                   text_column=str(data.get("text_column", "text")),
                   description=str(data.get("description", "")))

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineSpec:
        """Load a pipeline file."""
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text())
        except FileNotFoundError as exc:
            raise PipelineSpecError(str(p), "file not found", hint="check the --pipeline path") from exc
        except yaml.YAMLError as exc:  # one line with file:line:column, not the parser's context dump
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise PipelineSpecError(where, f"not valid YAML: {problem}",
                                    hint="check the indentation and quoting there; `granary curate steps` lists "
                                         "every step and its options") from None
        return cls.from_dict(data, where=str(p))

    def to_dict(self) -> dict[str, Any]:
        """A YAML/JSON-ready mapping (what lineage records)."""
        out: dict[str, Any] = {"name": self.name, "batch_rows": self.batch_rows, "batch_bytes": self.batch_bytes,
                               "text_column": self.text_column,
                               "steps": [_plain(s.to_dict()) for s in self.steps]}
        if self.description:
            out["description"] = self.description
        if self.reader is not None:
            out["reader"] = _plain(dataclasses.asdict(self.reader))
        return out

    def segments(self) -> list[Segment]:
        """Split into segments: each is a run of local steps, ending at a global step or the pipeline end."""
        segs: list[Segment] = []
        local: list[StepConfig] = []
        for s in self.steps:
            if s.kind == "global":
                segs.append(Segment(local=tuple(local), boundary=s))
                local = []
            else:
                local.append(s)
        segs.append(Segment(local=tuple(local), boundary=None))
        return segs


@dataclass(frozen=True)
class Segment:
    """Local steps run per unit, then (optionally) the global step whose keys they collect."""

    local: tuple[StepConfig, ...]
    boundary: StepConfig | None = field(default=None)


def describe_steps() -> list[dict[str, Any]]:
    """Every registered step: name, kind (local or global), summary and options with their defaults."""
    _load_steps()
    out = []
    for name in sorted(STEPS):
        cfg = STEPS[name].config_class
        hints = typing.get_type_hints(cfg)
        options = []
        for f in dataclasses.fields(cfg):
            if f.default is not dataclasses.MISSING:
                default: Any = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            hint = hints.get(f.name)
            type_name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            options.append({"name": f.name, "type": type_name,
                            "default": list(default) if isinstance(default, tuple) else default})
        doc = (cfg.__doc__ or "").strip().split("\n\n")[0]
        out.append({"step": name, "kind": cfg.kind, "summary": " ".join(doc.split()), "options": options})
    return out


def step_from_dict(raw: Any, *, where: str) -> StepConfig:
    """One step config from `{step: name, option: value, ...}`."""
    _load_steps()
    if isinstance(raw, str):
        raw = {"step": raw}
    if not isinstance(raw, dict) or "step" not in raw:
        raise PipelineSpecError(where, "each step is a mapping with a `step` key (or just the step name)")
    name = raw["step"]
    if name not in STEPS:
        raise PipelineSpecError(where, f"unknown step {name!r}", hint=f"known steps: {sorted(STEPS)}")
    kwargs = {k: v for k, v in raw.items() if k != "step"}
    return _build(STEPS[name].config_class, kwargs, f"{where} ({name})")


def _build(cls: type, kwargs: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise PipelineSpecError(where, f"unknown options {unknown}", hint=f"options: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    converted = {k: _coerce(v, hints[k]) for k, v in kwargs.items()}
    try:
        return cls(**converted)
    except PipelineSpecError as exc:
        raise PipelineSpecError(where, exc.reason) from exc
    except (TypeError, ValueError) as exc:
        raise PipelineSpecError(where, str(exc)) from exc


def _coerce(value: Any, hint: Any) -> Any:
    """YAML lists become tuples where the config expects tuples (nested too)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is not type(None) and typing.get_origin(arg) is tuple:
                return _coerce(value, arg)
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner) for v in value)
    return value


def _plain(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj
