"""Step base classes, the batch they share, and the registry that maps short names to step configs."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pyarrow as pa

from granary.curate.textview import TextView

REJECT_REASON_MAX = 200


class DocBatch:
    """A table of documents moving through local steps.

    Filters do not copy the table: they mark documents dead (with the step and reason) and the batch is
    compacted only when a step rewrites the text, so consecutive filters share one TextView split.
    """

    def __init__(self, table: pa.Table, *, text_column: str = "text", row_offset: int = 0) -> None:
        if text_column not in table.column_names:
            raise ValueError(f"batch has no {text_column!r} column (columns: {table.column_names})")
        self.table = table
        self.text_column = text_column
        self.row_offset = row_offset  # position of row 0 in the task's input (orders rejected rows)
        self.alive = np.ones(table.num_rows, dtype=bool)
        self._view: TextView | None = None
        self._rejected: list[pa.Table] = []

    @property
    def num_rows(self) -> int:
        """Rows in the underlying table, dead or alive."""
        return self.table.num_rows

    @property
    def num_alive(self) -> int:
        """Documents still alive."""
        return int(self.alive.sum())

    @property
    def view(self) -> TextView:
        """The shared word/line split of the current text column."""
        if self._view is None:
            self._view = TextView(self.table.column(self.text_column).combine_chunks())
        return self._view

    def alive_bytes(self) -> int:
        """UTF-8 bytes of the alive documents."""
        return int(self.view.doc_bytes[self.alive].sum())

    def drop(self, step: str, mask: np.ndarray, reason: str | np.ndarray) -> int:
        """Mark alive documents where `mask` holds as rejected by `step`; returns how many were dropped."""
        newly = mask & self.alive
        idx = np.flatnonzero(newly)
        if len(idx) == 0:
            return 0
        reasons = [reason] * len(idx) if isinstance(reason, str) else [str(r) for r in reason[idx]]
        rows = self.table.take(pa.array(idx))
        self._rejected.append(
            pa.table(
                {
                    "id": rows.column("id").cast(pa.string()) if "id" in rows.column_names else pa.nulls(len(idx)),
                    "text": rows.column(self.text_column),
                    "step": pa.array([step] * len(idx), pa.string()),
                    "reason": pa.array([r[:REJECT_REASON_MAX] for r in reasons], pa.string()),
                    "_pos": pa.array(idx + self.row_offset, pa.int64()),
                }
            )
        )
        self.alive &= ~newly
        return len(idx)

    def compact(self) -> None:
        """Physically remove dead rows (the view is rebuilt lazily)."""
        if self.alive.all():
            return
        self.table = self.table.filter(pa.array(self.alive))
        self.alive = np.ones(self.table.num_rows, dtype=bool)
        self._view = None

    def repeat_rows(self, copies: np.ndarray) -> None:
        """Compact, then repeat each alive row copies[i] times (ids of extra copies get `~dupK`)."""
        keep = self.alive & (copies > 0)
        reps = copies[keep]
        rows = np.repeat(np.flatnonzero(keep), reps)
        table = self.table.take(pa.array(rows))
        if "id" in table.column_names and (reps > 1).any():
            k = np.arange(len(rows)) - np.repeat(np.cumsum(reps) - reps, reps)
            ids = table.column("id").cast(pa.string()).to_pylist()
            ids = [i if j == 0 else f"{i}~dup{j}" for i, j in zip(ids, k.tolist(), strict=True)]
            table = table.set_column(table.column_names.index("id"), "id", pa.array(ids, pa.string()))
        self.table = table
        self.alive = np.ones(table.num_rows, dtype=bool)
        self._view = None

    def set_column(self, name: str, values: pa.Array) -> None:
        """Add or replace a column (same length as the table)."""
        if name in self.table.column_names:
            self.table = self.table.set_column(self.table.column_names.index(name), name, values)
        else:
            self.table = self.table.append_column(name, values)
        if name == self.text_column:
            self._view = None

    def set_text(self, values: pa.Array) -> None:
        """Replace the text column."""
        self.set_column(self.text_column, values.cast(pa.string()))

    def rejected(self) -> pa.Table:
        """All rejected rows so far (id, text, step, reason, and `_pos`: the row's input position)."""
        if not self._rejected:
            return empty_rejected().append_column("_pos", pa.array([], pa.int64()))
        return pa.concat_tables(self._rejected)


def empty_rejected() -> pa.Table:
    """An empty table with the `rejected` side-table schema."""
    return pa.table({k: pa.array([], pa.string()) for k in ("id", "text", "step", "reason")})


@dataclass(kw_only=True, frozen=True)
class StepConfig:
    """Base of every step's configuration; `name` is the registry key, `label` names one use in a pipeline."""

    label: str | None = None

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "local"  # "local" (per shard) or "global" (needs every shard)

    def build(self) -> Step:
        """Instantiate the step."""
        return STEPS[self.name].step_class(self)

    @property
    def display(self) -> str:
        """The name reported in statistics and rejected rows."""
        return self.label or self.name

    def to_dict(self) -> dict[str, Any]:
        """A YAML-ready mapping that `from_dict` turns back into this config."""
        out: dict[str, Any] = {"step": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default and not (f.default_factory is not dataclasses.MISSING
                                           and value == f.default_factory()):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


class Step:
    """A local step: sees one batch at a time and never knows where it runs."""

    def __init__(self, config: StepConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        """The display name of this step."""
        return self.config.display

    def process(self, batch: DocBatch) -> None:
        """Transform `batch` in place (drop, rewrite text, add columns)."""
        raise NotImplementedError


class GlobalStep(Step):
    """A step that needs the whole dataset: collect per shard, decide once, apply per shard."""

    def collect(self, batch: DocBatch) -> dict[str, np.ndarray]:
        """Per-shard keys that `decide` needs (row order = the batch's alive rows)."""
        raise NotImplementedError

    def decide(self, collected: list[Path], workdir: Path) -> list[Path]:
        """Read every shard's collected `.npz` and write one decision `.npz` per shard; returns their paths."""
        raise NotImplementedError

    def apply(self, batch: DocBatch, decision: dict[str, np.ndarray]) -> None:
        """Apply this shard's decision to the batch it collected from."""
        raise NotImplementedError

    def summary(self, workdir: Path) -> dict[str, Any]:
        """Global facts to report (cluster counts...), read back from `workdir` after `decide`."""
        return {}


@dataclass
class StepStats:
    """Counters for one step in one shard, summed over shards."""

    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)

    def add(self, other: StepStats) -> None:
        """Accumulate another shard's counters."""
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.seconds += other.seconds
        for k, v in other.counters.items():
            self.counters[k] = self.counters.get(k, 0) + v

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counters."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepStats:
        """Inverse of to_dict."""
        return cls(**d)


def timed(step: Step, batch: DocBatch, fn: Callable[[], None], stats: StepStats) -> None:
    """Run `fn` on `batch` and record documents and bytes in and out, time and drop counts."""
    stats.docs_in += batch.num_alive
    stats.bytes_in += batch.alive_bytes()
    t0 = time.perf_counter()
    fn()
    stats.seconds += time.perf_counter() - t0
    stats.docs_out += batch.num_alive
    stats.bytes_out += batch.alive_bytes()


@dataclass(frozen=True)
class StepEntry:
    """A registry entry: the config class and the step class it builds."""

    config_class: type[StepConfig]
    step_class: type[Step]


STEPS: dict[str, StepEntry] = {}
C = TypeVar("C", bound=type[StepConfig])


def register_step(name: str, step_class: type[Step], *, kind: str = "local") -> Callable[[C], C]:
    """Class decorator registering a config class under a short name."""

    def deco(cfg: C) -> C:
        if name in STEPS:
            raise ValueError(f"step {name!r} is registered twice")
        cfg.name = name
        cfg.kind = kind
        STEPS[name] = StepEntry(cfg, step_class)
        return cfg

    return deco
