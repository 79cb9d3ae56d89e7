"""A commit in progress: writes shards to staging, then publishes a manifest and moves the branch head.

The protocol, in order (a crash at any step leaves no half-visible version):

1. shard files are written to the transaction's staging directory, checksummed, and published to
   their content-addressed keys (invisible: nothing references them yet);
2. the manifest's shard-list segments and the manifest itself are written (content addressed, so a
   retried commit rewrites identical objects);
3. one catalog transaction inserts the version row and moves the branch head by compare-and-swap
   from the parent the commit was built on; if the head moved, the commit fails with ConflictError.
   Writes registered with ``add_catalog_write`` (a stream ingester's consumer offsets) run in that same
   catalog transaction, so they are committed together with the version or not at all.

Objects left behind by a crash before step 3 are unreferenced and removed by ``gc`` after its grace
period.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from granary.errors import ConflictError, StoreError
from granary.store import refs as R
from granary.store.filter import check_filter, matches
from granary.store.formats.parquet import DocumentShardWriter, check_document_schema, check_table_schema
from granary.store.manifest import ShardEntry, schema_to_json
from granary.store.model import CommitStats, VersionInfo
from granary.store.shard import publish, read_shard

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from granary.store.store import Store

log = logging.getLogger(__name__)

Mode = Literal["append", "overwrite"]
CatalogWrite = Callable[["Connection", VersionInfo], None]
ROW_KINDS = ("documents", "table")  # kinds whose shards are Parquet row files
SHARD_FORMATS = {"documents": "parquet", "table": "parquet", "tokens": "tokens", "checkpoint": "blob"}


class Transaction:
    """Collects the changes of one commit to a branch. Use as a context manager (see Store.transaction)."""

    def __init__(self, store: Store, dataset: str, *, branch: str | None, mode: Mode) -> None:
        if mode not in ("append", "overwrite"):
            raise ValueError(f"mode must be 'append' or 'overwrite', got {mode!r}")
        self.store = store
        self.info = store._dataset(dataset)
        self.dataset = dataset
        self.branch = branch or self.info.default_branch
        self.mode = mode
        self.txn_id = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        self.staging = store.objects.staging_dir(self.txn_id)
        with store.catalog.read() as conn:
            ref = R.get_ref(conn, dataset, "branch", self.branch)
        if ref is None:
            raise StoreError(f"branch {dataset}@{self.branch} does not exist",
                             hint=f"create it with `granary branch {dataset} {self.branch}`")
        self.parent_id = ref.version_id
        self.parent = store._manifest(self.parent_id) if self.parent_id else None
        self.new_shards: list[ShardEntry] = []
        self.side: dict[str, list[ShardEntry]] = {}
        self.deletes: list[str] = []
        self.schema: pa.Schema | None = self.parent.schema if (self.parent and mode == "append") else None
        self.stats = CommitStats()
        self._doc_writer: DocumentShardWriter | None = None
        self._catalog_writes: list[CatalogWrite] = []
        self.committed: VersionInfo | None = None
        self._closed = False

    # -- adding data ----------------------------------------------------------------------------
    def write(self, data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch]) -> None:
        """Add rows (a table, a batch, or an iterable of batches) to a documents or table dataset."""
        self._require_kind(*ROW_KINDS)
        check = check_document_schema if self.info.kind == "documents" else check_table_schema
        items = [data] if isinstance(data, (pa.Table, pa.RecordBatch)) else data
        for item in items:
            if self._doc_writer is None:
                self.schema = self.schema or check(item.schema)
                self._doc_writer = DocumentShardWriter(
                    self.staging,
                    self.schema,
                    shard_size_bytes=self.store.settings.shard_size_bytes,
                    row_group_bytes=self.store.settings.row_group_bytes,
                    on_shard=self._on_doc_shard,
                )
            self._doc_writer.write(item)

    def _on_doc_shard(self, path: Any, facts: dict[str, Any]) -> None:
        entry = publish(self.store.objects, self.store.hooks, self.dataset, path, fmt="parquet",
                        rows=facts["rows"], meta={"raw_bytes": facts["raw_bytes"], "row_groups": facts["row_groups"]})
        self._add(entry)

    def write_tokens(self, documents: Iterable[np.ndarray], *, dtype: str = "uint16",
                     shard_tokens: int | None = None, block_bytes: int | None = None) -> None:
        """Add token documents (one 1-D integer array each), cut into shards of about ``shard_tokens``."""
        self._require_kind("tokens")
        limit = shard_tokens or max(1, self.store.settings.shard_size_bytes // np.dtype(dtype).itemsize)
        batch: list[np.ndarray] = []
        count = 0
        for doc in documents:
            batch.append(doc)
            count += len(doc)
            if count >= limit:
                self.add_shards([self.store.write_token_shard(self.dataset, batch, dtype=dtype, _staging=self.staging,
                                                         **({"block_bytes": block_bytes} if block_bytes else {}))])
                batch, count = [], 0
        if batch:
            self.add_shards([self.store.write_token_shard(self.dataset, batch, dtype=dtype, _staging=self.staging,
                                                         **({"block_bytes": block_bytes} if block_bytes else {}))])

    def add_shards(self, entries: Iterable[ShardEntry]) -> None:
        """Reference shards already published by ``Store.write_shard`` / ``write_token_shard``."""
        for e in entries:
            expected = SHARD_FORMATS[self.info.kind]
            if e.format != expected:
                raise StoreError(f"a {self.info.kind} dataset takes {expected} shards, got {e.format} ({e.key})")
            self._add(e)

    def _add(self, entry: ShardEntry) -> None:
        self.new_shards.append(entry)
        self.stats.shards_written += 1
        self.stats.rows_written += entry.rows
        self.stats.bytes_written += entry.bytes

    def delete_where(self, expression: str) -> None:
        """Delete every row (of the parent and of rows written here) matching a filter expression.

        The expression is checked here, before any shard is read (syntax, size, and with a known schema
        its columns and types), so a bad filter fails at once and nothing is committed.
        """
        self._require_kind(*ROW_KINDS)
        schema = self.schema or (self.parent.schema if self.parent else None)
        check_filter(expression, schema)
        self.deletes.append(expression)

    def write_side_table(self, name: str, data: pa.Table | Iterable[pa.RecordBatch]) -> None:
        """Attach rows to a side table (``quarantine``, ``rejected``, ...) of any schema.

        ``data`` may be a table or an iterable of record batches, which is written as it streams (bounded
        memory); calling this again for the same name adds another shard to that side table.
        """
        batches = data.to_batches() if isinstance(data, pa.Table) else data
        path = self.staging / f"side-{name}-{uuid.uuid4().hex}.parquet"
        writer: pq.ParquetWriter | None = None
        rows = 0
        try:
            for batch in batches:
                if writer is None:
                    writer = pq.ParquetWriter(path, batch.schema, compression="zstd")
                writer.write_batch(batch)
                rows += batch.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None or rows == 0:
            path.unlink(missing_ok=True)
            return
        entry = publish(self.store.objects, self.store.hooks, self.dataset, path, fmt="parquet", rows=rows)
        self.side.setdefault(name, []).append(entry)

    def add_catalog_write(self, fn: CatalogWrite) -> None:
        """Run ``fn(connection, version)`` inside the catalog transaction that publishes this commit.

        The write commits together with the version and the branch move, or rolls back with them (a
        conflict, a crash, an error raised by ``fn`` itself). Stream ingesters record their consumer
        offsets this way, which is what makes their ingestion exactly once. ``fn`` may run more than once
        when the commit is retried on a new head; it must only touch its own tables.
        """
        if self._closed:
            raise StoreError("this transaction is already finished")
        self._catalog_writes.append(fn)

    # -- commit ---------------------------------------------------------------------------------
    def commit(
        self,
        *,
        message: str = "",
        author: str | None = None,
        lineage: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        retries: int = 0,
        allow_empty: bool = False,
    ) -> VersionInfo:
        """Publish the version and move the branch head; see the module docstring for the protocol.

        Args:
            message: commit message.
            author: defaults to the configured author.
            lineage: what produced this version (command or pipeline, parameters).
            metadata: source, license and free-form tags; inherited from the parent and updated.
            retries: on a conflict, rebuild an append-only commit on the new head this many times.
            allow_empty: commit a new version even if nothing changed. Without it, a commit whose shards, side
                tables and schema equal the branch head's (re-running a finished pipeline, or writing nothing)
                returns the existing head and creates no version (``stats.extra["unchanged"]`` is True).
        """
        if self._closed:
            raise StoreError("this transaction is already finished")
        self.store.hooks.authorize("write", self.dataset)
        if self._doc_writer is not None:
            self._doc_writer.close()
        attempt = 0
        while True:
            try:
                version = self._commit_once(message, author, lineage, metadata, allow_empty)
                break
            except ConflictError:
                if attempt >= retries or self.mode != "append" or self.deletes:
                    self.store.hooks.record("write", self.dataset, outcome="conflict")
                    raise
                attempt += 1
                self._rebase()
        self.committed = version
        self._finish()
        details: dict[str, Any] = {"rows": version.num_rows, "shards": version.num_shards}
        if self.stats.extra.get("unchanged"):
            details["unchanged"] = True
        self.store.hooks.record("write", self.dataset, version=version.id, details=details)
        return version

    def _rebase(self) -> None:
        with self.store.catalog.read() as conn:
            ref = R.get_ref(conn, self.dataset, "branch", self.branch)
        self.parent_id = ref.version_id if ref else None
        self.parent = self.store._manifest(self.parent_id) if self.parent_id else None

    def _final_shards(self) -> list[ShardEntry]:
        base = list(self.parent.shards) if (self.parent and self.mode == "append") else []
        shards = base + self.new_shards
        if self.deletes and self.schema is None and not shards:
            raise StoreError(f"nothing to delete from: {self.dataset}@{self.branch} has no rows and no schema",
                             hint="ingest or commit data first")
        for expression in self.deletes:  # again, now that rows written in this transaction fixed the schema
            check_filter(expression, self.schema)
        for expression in self.deletes:
            shards = self._apply_delete(shards, expression)
        return shards

    def _apply_delete(self, shards: list[ShardEntry], expression: str) -> list[ShardEntry]:
        out: list[ShardEntry] = []
        for entry in shards:
            table = read_shard(self.store.objects, self.store.hooks, entry)
            mask = matches(table, expression)
            hits = int(pc.sum(mask).as_py() or 0)
            if hits == 0:
                out.append(entry)
                continue
            self.stats.extra["rows_deleted"] = self.stats.extra.get("rows_deleted", 0) + hits
            kept = table.filter(pc.invert(mask))
            if kept.num_rows:
                out.append(self.store.write_shard(self.dataset, kept, _staging=self.staging))
        return out

    def _commit_once(self, message: str, author: str | None, lineage: dict[str, Any] | None,
                     metadata: dict[str, Any] | None, allow_empty: bool) -> VersionInfo:
        shards = self._final_shards()
        if not allow_empty and not self._catalog_writes and self.parent is not None and self._unchanged(shards) \
                and {**self.parent.metadata, **(metadata or {})} == self.parent.metadata:
            self.stats.extra["unchanged"] = True
            return self.store._resolve(f"{self.dataset}@{self.parent.version_id}")
        merged_meta = dict(self.parent.metadata) if self.parent else dict(self.info.metadata)
        merged_meta.update(metadata or {})
        return self.store._publish_version(
            dataset=self.dataset,
            kind=self.info.kind,
            branch=self.branch,
            parent_id=self.parent_id,
            shards=shards,
            tables=self.side,
            schema=schema_to_json(self.schema) if self.info.kind in ROW_KINDS else None,
            message=message,
            author=author or self.store.settings.author,
            lineage=lineage or {},
            metadata=merged_meta,
            catalog_writes=self._catalog_writes,
        )

    def _unchanged(self, shards: list[ShardEntry]) -> bool:
        """Whether committing ``shards`` (and the staged side tables and schema) would repeat the head."""
        assert self.parent is not None
        if [e.key for e in shards] != [e.key for e in self.parent.shards]:
            return False
        side = {name: [e.key for e in entries] for name, entries in self.side.items()}
        if self.mode == "append":
            if side:
                return False
        elif side != {name: [e.key for e in entries] for name, entries in self.parent.tables.items()}:
            return False
        kind_docs = self.info.kind == "documents"
        return not kind_docs or self.schema is None or self.parent.schema is None \
            or self.schema.equals(self.parent.schema)

    def abort(self) -> None:
        """Drop staged files; published-but-unreferenced shards are left for ``gc``."""
        if self._doc_writer is not None:
            self._doc_writer.abort()
        self._finish()

    def _finish(self) -> None:
        self._closed = True
        self.store.objects.remove_staging(self.txn_id)

    def _require_kind(self, *kinds: str) -> None:
        if self.info.kind not in kinds:
            raise StoreError(f"dataset {self.dataset} holds {self.info.kind}, not {' or '.join(kinds)}")

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._closed:
            self.abort()
