"""The series store: metric samples kept in the catalog for the detectors, the CLI and energy accounting."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from granary.catalog import Catalog
from granary.monitor import tables as t
from granary.monitor.host import Sample


def label_key(labels: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Canonical JSON of a label set (sorted keys), the series' identity next to its name."""
    items = labels.items() if isinstance(labels, Mapping) else labels
    return json.dumps(dict(sorted(items)), separators=(",", ":"))


@dataclass(frozen=True)
class Series:
    """One series read back: its name, labels and samples in time order (NaN where a NaN was reported)."""

    name: str
    labels: dict[str, str]
    ts: np.ndarray
    values: np.ndarray


class SeriesStore:
    """Writes and reads samples in the catalog's ``monitor_series`` / ``monitor_samples`` tables.

    Args:
        catalog: the catalog (SQLite or PostgreSQL).
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def _series_ids(self, conn: sa.Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        missing = [k for k in keys if k not in self._ids]
        if missing:
            names = {n for n, _ in missing}
            q = sa.select(t.series.c.id, t.series.c.name, t.series.c.labels).where(t.series.c.name.in_(names))
            for sid, name, labels in conn.execute(q):
                self._ids[(name, labels)] = sid
            new = [k for k in missing if k not in self._ids]
            for name, labels in new:
                res = conn.execute(t.series.insert().values(name=name, labels=labels))
                self._ids[(name, labels)] = _pk(res)
        return {k: self._ids[k] for k in keys}

    def write(self, samples: Iterable[Sample], *, ts: float, extra: Mapping[str, str] | None = None) -> int:
        """Store samples taken at ``ts``; ``extra`` labels (e.g. ``node``) are added to each. Returns the count."""
        rows = []
        for name, labels, value in samples:
            key = (name, label_key(tuple(labels) + tuple((extra or {}).items())))
            rows.append((key, None if math.isnan(value) else float(value)))
        if not rows:
            return 0
        with self._lock, self.catalog.write() as conn:
            ids = self._series_ids(conn, {k for k, _ in rows})
            conn.execute(t.samples.insert(), [dict(series_id=ids[k], ts=ts, value=v) for k, v in rows])
        return len(rows)

    def read(self, name: str, *, since: float | None = None, until: float | None = None,
             match: Mapping[str, str] | None = None) -> list[Series]:
        """Series named ``name`` whose labels include ``match``, with samples in ``[since, until]``."""
        q = (sa.select(t.series.c.id, t.series.c.labels, t.samples.c.ts, t.samples.c.value)
             .join(t.samples, t.samples.c.series_id == t.series.c.id).where(t.series.c.name == name))
        if since is not None:
            q = q.where(t.samples.c.ts >= since)
        if until is not None:
            q = q.where(t.samples.c.ts <= until)
        q = q.order_by(t.series.c.id, t.samples.c.ts)
        grouped: dict[int, tuple[str, list[float], list[float]]] = {}
        with self.catalog.read() as conn:
            for sid, labels, ts, value in conn.execute(q):
                entry = grouped.setdefault(sid, (labels, [], []))
                entry[1].append(ts)
                entry[2].append(math.nan if value is None else value)
        out = []
        for labels, ts_list, values in grouped.values():
            lab = json.loads(labels)
            if match and any(lab.get(k) != v for k, v in match.items()):
                continue
            out.append(Series(name, lab, np.asarray(ts_list), np.asarray(values, dtype=np.float64)))
        return out

    def names(self) -> list[str]:
        """Metric names with at least one series."""
        with self.catalog.read() as conn:
            return [r[0] for r in conn.execute(sa.select(t.series.c.name).distinct().order_by(t.series.c.name))]

    def prune(self, older_than: float) -> int:
        """Delete samples taken before ``older_than``; returns how many."""
        with self.catalog.write() as conn:
            return int(conn.execute(t.samples.delete().where(t.samples.c.ts < older_than)).rowcount or 0)


def _pk(result: sa.CursorResult[Any]) -> int:
    """The primary key of a one-row insert."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])
