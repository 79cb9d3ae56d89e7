"""Sinks: workers write output shards (any process), the coordinator commits them with side tables."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from granary.config import Settings

if TYPE_CHECKING:
    from granary.store import Store

log = logging.getLogger(__name__)
_stores: dict[tuple[str, str, str], Store] = {}


def store_for(settings: Settings) -> Store:
    """One open store per process and settings (workers reuse it across tasks)."""
    from granary.store import open_store

    key = (str(settings.home), settings.catalog_url, settings.storage_url)
    if key not in _stores:
        _stores[key] = open_store(settings)
    return _stores[key]


class Sink:
    """Where output shards go. Must be picklable: it travels to worker processes."""

    def write(self, table: pa.Table) -> dict[str, Any]:
        """Write one output shard; returns a JSON-ready entry that `finish` understands."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Coordinator-side setup before any task runs."""

    def finish(self, entries: list[dict[str, Any]], side_tables: dict[str, pa.Table], *, message: str,
               lineage: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
        """Publish the output; returns facts about it (version id, rows...)."""
        raise NotImplementedError


@dataclass(frozen=True)
class StoreSink(Sink):
    """Commits the output as a new version of `dataset@branch` (overwrite: the version holds exactly the
    pipeline output), with `rejected`, `quarantine` and step side tables."""

    settings: Settings
    dataset: str
    branch: str = "main"
    allow_empty: bool = False  # False: an output identical to the head returns the head (no new version)

    def prepare(self) -> None:
        store_for(self.settings).create_dataset(self.dataset, kind="documents", exist_ok=True,
                                                description="curated by a granary pipeline")

    def write(self, table: pa.Table) -> dict[str, Any]:
        entry = store_for(self.settings).write_shard(self.dataset, table)
        return entry.canonical()

    def finish(self, entries: list[dict[str, Any]], side_tables: dict[str, pa.Table], *, message: str,
               lineage: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
        from granary.store import ShardEntry

        store = store_for(self.settings)
        with store.transaction(self.dataset, branch=self.branch, mode="overwrite") as txn:
            txn.add_shards([ShardEntry(**e) for e in entries])
            for name, table in side_tables.items():
                txn.write_side_table(name, table)
            version = txn.commit(message=message, lineage=lineage, metadata=metadata, allow_empty=self.allow_empty)
        return {"version": version.id, "ref": f"{self.dataset}@{version.id[:12]}", "rows": version.num_rows,
                "bytes": version.num_bytes, "shards": version.num_shards}


@dataclass(frozen=True)
class ParquetDirSink(Sink):
    """Writes output shards and side tables as Parquet files under `path` (no store needed)."""

    path: str

    def prepare(self) -> None:
        Path(self.path).mkdir(parents=True, exist_ok=True)

    def write(self, table: pa.Table) -> dict[str, Any]:
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = Path(self.path) / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(Path(self.path) / name)
        return {"key": name, "rows": table.num_rows}

    def finish(self, entries: list[dict[str, Any]], side_tables: dict[str, pa.Table], *, message: str,
               lineage: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
        root = Path(self.path)
        keep = {e["key"] for e in entries}
        for stale in root.glob("part-*.parquet"):
            if stale.name not in keep:  # shards of tasks that were killed before their completion record
                stale.unlink()
        for name, table in side_tables.items():
            pq.write_table(table, root / f"{name}.parquet", compression="zstd")
        manifest = {"shards": entries, "message": message, "lineage": lineage, "metadata": metadata}
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        return {"path": str(root), "rows": sum(e["rows"] for e in entries), "shards": len(entries)}
