"""Plain records the store returns: datasets, versions, refs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["documents", "tokens", "table", "checkpoint"]
# documents: id + text rows; tokens: token shards; table: typed rows of any schema (curated tabular data, streams);
# checkpoint: opaque blobs of a training checkpoint
KINDS: tuple[str, ...] = ("documents", "tokens", "table", "checkpoint")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset as recorded in the catalog."""

    name: str
    kind: str
    default_branch: str
    description: str
    metadata: dict[str, Any]
    created_at: float
    created_by: str

    @classmethod
    def from_row(cls, row: Any) -> DatasetInfo:
        return cls(
            name=row.name,
            kind=row.kind,
            default_branch=row.default_branch,
            description=row.description,
            metadata=json.loads(row.metadata),
            created_at=row.created_at,
            created_by=row.created_by,
        )


@dataclass(frozen=True)
class VersionInfo:
    """An immutable version as recorded in the catalog (the manifest holds the shard list)."""

    id: str
    dataset: str
    kind: str
    parents: list[str]
    num_rows: int
    num_bytes: int
    num_shards: int
    num_tokens: int | None
    message: str
    author: str
    created_at: float
    manifest_key: str
    state: str = "live"

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def ref(self) -> str:
        """A reference string that names exactly this version."""
        return f"{self.dataset}@{self.id[:16]}"

    @classmethod
    def from_row(cls, row: Any) -> VersionInfo:
        return cls(
            id=row.id,
            dataset=row.dataset,
            kind=row.kind,
            parents=json.loads(row.parents),
            num_rows=int(row.num_rows),
            num_bytes=int(row.num_bytes),
            num_shards=int(row.num_shards),
            num_tokens=None if row.num_tokens is None else int(row.num_tokens),
            message=row.message,
            author=row.author,
            created_at=float(row.created_at),
            manifest_key=row.manifest_key,
            state=row.state,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class RefInfo:
    """A branch or tag and the version it points to (None for a branch with no commit yet)."""

    dataset: str
    kind: str
    name: str
    version_id: str | None
    updated_at: float


@dataclass
class CommitStats:
    """Counters a transaction accumulates (reported by ingest and the CLI)."""

    shards_written: int = 0
    rows_written: int = 0
    bytes_written: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
