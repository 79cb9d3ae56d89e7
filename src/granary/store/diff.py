"""Differences between two versions: shards, rows (as multisets) and schema."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import xxhash

if TYPE_CHECKING:
    from granary.store.store import Store


@dataclass
class Diff:
    """What turns version ``a`` into version ``b``.

    Rows are compared as multisets of whole rows (every column), so duplicates count. Only shards
    that are not shared by both versions are read: an append-only change costs the new shards.

    Attributes:
        rows_added: rows of ``b`` that ``a`` lacks.
        rows_removed: rows of ``a`` that ``b`` lacks.
        schema_changes: ``{"column", "change": added|removed|type, "from", "to"}`` entries.
    """

    a: str
    b: str
    shards_added: list[str] = field(default_factory=list)
    shards_removed: list[str] = field(default_factory=list)
    rows_added: pa.Table | None = None
    rows_removed: pa.Table | None = None
    schema_changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_rows_added(self) -> int:
        return 0 if self.rows_added is None else self.rows_added.num_rows

    @property
    def num_rows_removed(self) -> int:
        return 0 if self.rows_removed is None else self.rows_removed.num_rows

    def apply_to(self, table: pa.Table) -> pa.Table:
        """Apply this diff to the rows of ``a``: remove ``rows_removed``, add ``rows_added``."""
        remove = Counter(row_fingerprints(self.rows_removed)) if self.rows_removed is not None else Counter()
        keep = []
        for i, fp in enumerate(row_fingerprints(table)):
            if remove[fp] > 0:
                remove[fp] -= 1
            else:
                keep.append(i)
        kept = table.take(pa.array(keep, type=pa.int64()))
        if self.rows_added is None or self.rows_added.num_rows == 0:
            return kept
        if kept.num_rows == 0:
            return self.rows_added
        return pa.concat_tables([kept, self.rows_added], promote_options="permissive")

    def to_dict(self, *, rows: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "a": self.a, "b": self.b,
            "shards_added": self.shards_added, "shards_removed": self.shards_removed,
            "rows_added": self.num_rows_added, "rows_removed": self.num_rows_removed,
            "schema_changes": self.schema_changes,
        }
        if rows:
            out["added"] = [] if self.rows_added is None else self.rows_added.to_pylist()
            out["removed"] = [] if self.rows_removed is None else self.rows_removed.to_pylist()
        return out


def row_fingerprints(table: pa.Table | None) -> list[str]:
    """A stable hash per row over every column (column order ignored)."""
    if table is None or table.num_rows == 0:
        return []
    names = sorted(table.column_names)
    cols = [table.column(n).to_pylist() for n in names]
    out = []
    for values in zip(*cols, strict=True):
        data = json.dumps(dict(zip(names, values, strict=True)), sort_keys=True, default=str, ensure_ascii=False)
        out.append(xxhash.xxh3_128_hexdigest(data.encode("utf-8")))
    return out


def diff(store: Store, a: str, b: str, *, rows: bool = True, purpose: str | None = None) -> Diff:
    """Compare two versions (of the same or different datasets).

    Comparing rows reads both versions: a data read of each (authorised for ``purpose`` and audited);
    comparing shards and schemas only describes them.
    """
    va, vb = store.resolve(a), store.resolve(b)
    if rows and va.kind == "documents" and vb.kind == "documents":
        ma, mb = store.open_version(va, purpose=purpose), store.open_version(vb, purpose=purpose)
    else:
        ma, mb = store.manifest(va), store.manifest(vb)
    keys_a, keys_b = {e.key for e in ma.shards}, {e.key for e in mb.shards}
    out = Diff(a=va.id, b=vb.id)
    out.shards_added = [e.key for e in mb.shards if e.key not in keys_a]
    out.shards_removed = [e.key for e in ma.shards if e.key not in keys_b]
    out.schema_changes = _schema_changes(ma.schema, mb.schema)
    if rows and va.kind == "documents" and vb.kind == "documents":
        only_a = [e for e in ma.shards if e.key not in keys_b]
        only_b = [e for e in mb.shards if e.key not in keys_a]
        ta = _concat([store.read_shard(e) for e in only_a], ma.schema)
        tb = _concat([store.read_shard(e) for e in only_b], mb.schema)
        out.rows_removed, out.rows_added = _multiset_diff(ta, tb)
    return out


def _concat(tables: list[pa.Table], schema: pa.Schema | None) -> pa.Table:
    if tables:
        return pa.concat_tables(tables)
    return (schema or pa.schema([("id", pa.string()), ("text", pa.string())])).empty_table()


def _multiset_diff(ta: pa.Table, tb: pa.Table) -> tuple[pa.Table, pa.Table]:
    fa, fb = row_fingerprints(ta), row_fingerprints(tb)
    in_b = Counter(fb)
    removed = []
    for i, fp in enumerate(fa):
        if in_b[fp] > 0:
            in_b[fp] -= 1
        else:
            removed.append(i)
    in_a = Counter(fa)
    added = []
    for i, fp in enumerate(fb):
        if in_a[fp] > 0:
            in_a[fp] -= 1
        else:
            added.append(i)
    return ta.take(pa.array(removed, type=pa.int64())), tb.take(pa.array(added, type=pa.int64()))


def _schema_changes(sa: pa.Schema | None, sb: pa.Schema | None) -> list[dict[str, Any]]:
    fa = {f.name: str(f.type) for f in (sa or [])}
    fb = {f.name: str(f.type) for f in (sb or [])}
    changes: list[dict[str, Any]] = []
    for name in sorted(fa.keys() | fb.keys()):
        if name not in fa:
            changes.append({"column": name, "change": "added", "from": None, "to": fb[name]})
        elif name not in fb:
            changes.append({"column": name, "change": "removed", "from": fa[name], "to": None})
        elif fa[name] != fb[name]:
            changes.append({"column": name, "change": "type", "from": fa[name], "to": fb[name]})
    return changes
