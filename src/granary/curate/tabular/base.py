"""The base of tabular steps and their registry (short names used by YAML pipelines and the CLI)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from granary.curate.errors import PipelineSpecError
from granary.curate.tabular.context import TabularContext


@dataclass(kw_only=True, frozen=True)
class TabularStep:
    """A tabular step: turns the view it is given into a new view (SQL over Arrow, run by DuckDB).

    Attributes:
        label: a name for this use of the step (reports, quarantine rows); defaults to the step name.
    """

    label: str | None = None
    name: ClassVar[str] = ""

    @property
    def display(self) -> str:
        """The name used in reports and quarantine rows."""
        return self.label or self.name

    def apply(self, ctx: TabularContext, rel: str) -> str:
        """Return the name of a view holding this step's output of view ``rel``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """A YAML-ready mapping that ``step_from_dict`` turns back into this step."""
        out: dict[str, Any] = {"step": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default and not (f.default_factory is not dataclasses.MISSING
                                           and value == f.default_factory()):
                out[f.name] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items() if v is not None and v != ()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


TABULAR_STEPS: dict[str, type[TabularStep]] = {}
S = TypeVar("S", bound=type[TabularStep])


def register(name: str) -> Callable[[S], S]:
    """Class decorator registering a tabular step under a short name."""

    def deco(cls: S) -> S:
        if name in TABULAR_STEPS:
            raise ValueError(f"tabular step {name!r} is registered twice")
        cls.name = name
        TABULAR_STEPS[name] = cls
        return cls

    return deco


def step_from_dict(data: dict[str, Any], *, where: str) -> TabularStep:
    """Build a step from its YAML mapping (``step: NAME`` plus the step's options)."""
    if not isinstance(data, dict) or "step" not in data:
        raise PipelineSpecError(where, "each step is a mapping with a `step:` key")
    name = data["step"]
    cls = TABULAR_STEPS.get(name)
    if cls is None:
        raise PipelineSpecError(where, f"unknown tabular step {name!r}", hint=f"known steps: {sorted(TABULAR_STEPS)}")
    options = {k: v for k, v in data.items() if k != "step"}
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise PipelineSpecError(where, f"unknown options {unknown} for step {name!r}", hint=f"options: {sorted(known)}")
    converter = getattr(cls, "convert_options", None)
    if converter is not None:
        options = converter(options, where)
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, PipelineSpecError):
            raise
        raise PipelineSpecError(where, str(exc)) from exc
