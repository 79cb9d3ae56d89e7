"""The Store: datasets, versions, refs, reads and commits over the catalog and the object storage."""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from sqlalchemy.engine import Connection

from granary.catalog import Catalog, open_catalog
from granary.config import Settings
from granary.errors import ExpiredVersionError, IntegrityError, NotFoundError, StoreError
from granary.store import refs as R
from granary.store.formats.tokens import TokenShardWriter
from granary.store.formats.tokens.layout import DEFAULT_BLOCK_BYTES
from granary.store.gate import ReadGate, dataset_of_key
from granary.store.hooks import StoreHooks
from granary.store.lineage import lineage_sources
from granary.store.manifest import (
    Manifest,
    SegmentRef,
    ShardEntry,
    canonical_json,
    chunk,
    decode_segment,
    encode_segment,
    envelope,
    parse_envelope,
    version_id_of,
)
from granary.store.model import KINDS, DatasetInfo, RefInfo, VersionInfo
from granary.store.names import check_dataset_name, check_ref_name, looks_like_version_id, parse_ref
from granary.store.objects import ObjectStore
from granary.store.shard import iter_shard_batches, open_plain, publish, read_shard
from granary.store.transaction import Mode, Transaction

if TYPE_CHECKING:
    from granary.secure.tokens import Principal

log = logging.getLogger(__name__)
MANIFEST_FORMAT_VERSION = 1


class Store:
    """Versioned, content-addressed datasets.

    Args:
        settings: where the catalog and objects live (see :class:`granary.config.Settings`).
        hooks: authorization, audit and encryption callbacks (default: :func:`granary.store.hooks.default_hooks`,
            the security layer when the environment asks for it or the catalog holds policies, principals or
            wrapped keys; else single-user with no checks).
        catalog: an already-open catalog (default: opened from ``settings.catalog_url``).

    Every public read method passes the view's :class:`granary.store.gate.ReadGate` (authorised and audited);
    :meth:`bind` returns a view of the same store for another principal or purpose.
    """

    def __init__(self, settings: Settings, *, hooks: StoreHooks | None = None, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or open_catalog(settings.catalog_url)
        self.objects = ObjectStore(settings.storage_url, options=settings.storage_options,
                                   local_staging=settings.home / "staging")
        if hooks is None:
            from granary.store.hooks import default_hooks

            hooks = default_hooks(settings, catalog=self.catalog)
        self.gate = ReadGate(hooks)
        self._hooks: StoreHooks = hooks
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def hooks(self) -> StoreHooks:
        """Authorization, audit and encryption callbacks (replacing them also replaces the read gate)."""
        return self._hooks

    @hooks.setter
    def hooks(self, hooks: StoreHooks) -> None:
        self._hooks = hooks
        self.gate = ReadGate(hooks, purpose=self.gate.purpose)

    # -- views ----------------------------------------------------------------------------------
    def bind(self, *, principal: str | Principal | None = None, token: str | None = None,
             purpose: str | None = None) -> Store:
        """A view of this store acting for ``principal`` (or the holder of ``token``) reading for ``purpose``.

        The view shares the catalog, objects and manifest cache, and has its own read gate: every read through it
        is authorised for that principal and purpose and audited under its name. ``token`` is authenticated
        (a bad one is refused and audited); ``principal`` names a registered principal and is for trusted
        services that authenticated the caller themselves. With neither, the view keeps this store's principal
        and only changes the purpose. Binding a principal turns the security layer on for the view. A
        ``Principal`` object (from :mod:`granary.secure.tokens`) is one the caller authenticated itself, used as
        is with its token's scopes (the HTTP server, which remembers its token lookups briefly).
        """
        view = copy.copy(self)
        if principal is not None or token is not None:
            binder = getattr(self.hooks, "bind", None)
            if binder is None:
                from granary.secure.hooks import SecureHooks

                secure = SecureHooks.from_settings(self.settings, catalog=self.catalog)
                view.hooks = secure.bind(principal=principal, token=token)
            else:
                view.hooks = binder(principal=principal, token=token)
        view.gate = ReadGate(view.hooks, purpose=purpose if purpose is not None else self.gate.purpose)
        return view

    @property
    def purpose(self) -> str | None:
        """The purpose this view declares for data reads (see :meth:`bind`)."""
        return self.gate.purpose

    # -- datasets -------------------------------------------------------------------------------
    def create_dataset(
        self,
        name: str,
        *,
        kind: str = "documents",
        description: str = "",
        metadata: dict[str, Any] | None = None,
        default_branch: str = "main",
        exist_ok: bool = False,
    ) -> DatasetInfo:
        """Register a new, empty dataset with one branch (``main``)."""
        check_dataset_name(name)
        check_ref_name(default_branch)
        if kind not in KINDS:
            raise StoreError(f"dataset kind must be one of {KINDS}, got {kind!r}")
        self.hooks.authorize("create", name)
        info = DatasetInfo(name, kind, default_branch, description, dict(metadata or {}), time.time(),
                           self.settings.author)
        try:
            with self.catalog.write() as conn:
                R.insert_dataset(conn, info)
        except StoreError:
            if exist_ok:
                existing = self.dataset(name)
                if existing.kind != kind:
                    raise StoreError(f"dataset {name} exists with kind {existing.kind}, not {kind}") from None
                return existing
            raise
        self.hooks.record("create", name, details={"kind": kind})
        return info

    def dataset(self, name: str) -> DatasetInfo:
        """A dataset's catalog record."""
        info = self._dataset(name)
        self.gate.allow("list", name)
        return info

    def _dataset(self, name: str) -> DatasetInfo:
        check_dataset_name(name)
        with self.catalog.read() as conn:
            return R.get_dataset(conn, name)

    def datasets(self) -> list[DatasetInfo]:
        """Every dataset the caller may list, by name."""
        with self.catalog.read() as conn:
            found = R.list_datasets(conn)
        visible = self.gate.visible(d.name for d in found)
        return [d for d in found if d.name in visible]

    # -- refs -----------------------------------------------------------------------------------
    def resolve(self, ref: str | VersionInfo) -> VersionInfo:
        """Resolve ``name``, ``name@branch``, ``name@tag`` or ``name@<version-id-prefix>``."""
        version = self._resolve(ref)
        self.gate.allow("list", version.dataset)
        return version

    def _resolve(self, ref: str | VersionInfo) -> VersionInfo:
        if isinstance(ref, VersionInfo):
            return ref
        parsed = parse_ref(ref)
        with self.catalog.read() as conn:
            version = R.resolve(conn, parsed)
        if version.state != "live":
            raise ExpiredVersionError(version.dataset, version.id, version.state)
        return version

    def refs(self, dataset: str, kind: str | None = None) -> list[RefInfo]:
        """Branches and tags of a dataset."""
        refs = self._refs(dataset, kind)
        self.gate.allow("list", dataset)
        return refs

    def _refs(self, dataset: str, kind: str | None = None) -> list[RefInfo]:
        with self.catalog.read() as conn:
            R.get_dataset(conn, dataset)
            return R.list_refs(conn, dataset, kind)

    def branch(self, dataset: str, name: str, *, from_ref: str | None = None) -> RefInfo:
        """Create branch ``name`` at ``from_ref`` (default: the dataset's default branch head)."""
        check_ref_name(name)
        self.hooks.authorize("branch", dataset)
        version = self._resolve(from_ref or dataset)
        with self.catalog.write() as conn:
            R.create_ref(conn, dataset, "branch", name, version.id, self.settings.author)
            ref = R.get_ref(conn, dataset, "branch", name)
        self.hooks.record("branch", dataset, version=version.id, details={"branch": name})
        assert ref is not None
        return ref

    def tag(self, dataset: str, name: str, *, ref: str | None = None) -> RefInfo:
        """Create tag ``name`` pointing at ``ref`` (default: the default branch head). Tags never move."""
        check_ref_name(name, "tag")
        self.hooks.authorize("tag", dataset)
        version = self._resolve(ref or dataset)
        if version.dataset != dataset:
            raise StoreError(f"{ref} is a version of {version.dataset}, not {dataset}")
        with self.catalog.write() as conn:
            R.create_ref(conn, dataset, "tag", name, version.id, self.settings.author)
            found = R.get_ref(conn, dataset, "tag", name)
        self.hooks.record("tag", dataset, version=version.id, details={"tag": name})
        assert found is not None
        return found

    def delete_ref(self, dataset: str, name: str, *, kind: str = "branch") -> None:
        """Delete a branch or tag (the default branch cannot be deleted)."""
        if kind == "branch" and name == self._dataset(dataset).default_branch:
            raise StoreError(f"cannot delete the default branch {dataset}@{name}")
        self.hooks.authorize(kind, dataset)
        with self.catalog.write() as conn:
            R.delete_ref(conn, dataset, kind, name, self.settings.author)
        self.hooks.record(kind, dataset, details={"deleted": name})

    def rollback(self, dataset: str, to_ref: str, *, branch: str | None = None) -> VersionInfo:
        """Move a branch head back (or forward) to another version of the dataset; history is kept."""
        target = self._resolve(to_ref if "@" in to_ref else f"{dataset}@{to_ref}")
        if target.dataset != dataset:
            raise StoreError(f"{to_ref} is a version of {target.dataset}, not {dataset}")
        self.hooks.authorize("rollback", dataset)
        branch = branch or self._dataset(dataset).default_branch
        with self.catalog.write() as conn:
            current = R.get_ref(conn, dataset, "branch", branch)
            if current is None:
                raise NotFoundError(f"branch {dataset}@{branch} does not exist")
            R.move_ref(conn, dataset, "branch", branch, expected=current.version_id, new=target.id,
                       action="rollback", actor=self.settings.author)
        self.hooks.record("rollback", dataset, version=target.id, details={"branch": branch})
        return target

    def log(self, ref: str, *, limit: int = 50) -> list[VersionInfo]:
        """The version ``ref`` resolves to and its first-parent ancestors, newest first."""
        version = self.resolve(ref)
        out = [version]
        with self.catalog.read() as conn:
            while version.parents and len(out) < limit:
                version = R.get_version(conn, version.parents[0])
                out.append(version)
        return out

    def history(self, dataset: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The ref log: every move of a branch or tag (commits, rollbacks, creations), newest first."""
        with self.catalog.read() as conn:
            R.get_dataset(conn, dataset)
            out = R.history(conn, dataset, limit)
        self.gate.allow("list", dataset)
        return out

    def versions(self, dataset: str | None = None) -> list[VersionInfo]:
        """Every recorded version (of one dataset, or of every dataset the caller may list), oldest first."""
        found = self._versions(dataset)
        if dataset is not None:
            self.gate.allow("list", dataset)
            return found
        visible = self.gate.visible({v.dataset for v in found})
        return [v for v in found if v.dataset in visible]

    def _versions(self, dataset: str | None = None) -> list[VersionInfo]:
        with self.catalog.read() as conn:
            return R.all_versions(conn, dataset)

    # -- manifests ------------------------------------------------------------------------------
    def manifest(self, ref: str | VersionInfo) -> Manifest:
        """The full manifest of a version (shards, schema, lineage, metadata, side tables).

        A description, authorised as listing the dataset; reading the shards it names is a data read
        (:meth:`open_version`, :meth:`read_shard`), authorised for the view's purpose.
        """
        version = self._version_of(ref)
        self.gate.allow("list", version.dataset)
        return self._manifest(version)

    def _version_of(self, ref: str | VersionInfo) -> VersionInfo:
        version = self._by_full_id(ref) if isinstance(ref, str) else None
        return version if version is not None else self._resolve(ref)

    def _manifest(self, ref: str | VersionInfo) -> Manifest:
        """The manifest without a read decision: for the store's own write, verify, gc and governance paths."""
        version = self._version_of(ref)
        with self._lock:
            cached = self._manifests.get(version.id)
            if cached is not None:
                self._manifests.move_to_end(version.id)
                return cached
        manifest = self._load_manifest(version.manifest_key, expected_id=version.id)
        with self._lock:
            self._manifests[version.id] = manifest
            while len(self._manifests) > 64:
                self._manifests.popitem(last=False)
        return manifest

    def _by_full_id(self, ref: str) -> VersionInfo | None:
        """The version whose full 64-hex id is ``ref`` (ids are accepted where a reference is)."""
        if len(ref) != 64 or "@" in ref or not looks_like_version_id(ref):
            return None
        with self.catalog.read() as conn:
            try:
                return R.get_version(conn, ref)
            except NotFoundError:
                return None

    def load_manifest(self, key: str, *, expected_id: str | None = None) -> Manifest:
        """Read and check a manifest object and its segments (a description of its dataset: authorised)."""
        self.gate.allow("list", dataset_of_key(key))
        return self._load_manifest(key, expected_id=expected_id)

    def _load_manifest(self, key: str, *, expected_id: str | None = None) -> Manifest:
        try:
            data = self.objects.get_bytes(key)
        except NotFoundError:
            raise IntegrityError(f"manifest {key} is missing", key=key, expected=expected_id) from None
        vid, body, created = parse_envelope(data, key=key)
        if expected_id is not None and vid != expected_id:
            raise IntegrityError(f"manifest {key} belongs to version {vid[:12]}, not {expected_id[:12]}", key=key)
        shards = self._load_segments(body["segments"])
        tables = {name: self._load_segments(segs) for name, segs in (body.get("tables") or {}).items()}
        return Manifest(version_id=vid, body=body, shards=shards, tables=tables, created_at=created)

    def _load_segments(self, segments: Sequence[dict[str, Any]]) -> list[ShardEntry]:
        out: list[ShardEntry] = []
        for seg in segments:
            try:
                data = self.objects.get_bytes(seg["key"])
            except NotFoundError:
                raise IntegrityError(f"manifest segment {seg['key']} is missing", key=seg["key"]) from None
            out.extend(decode_segment(data, key=seg["key"], expected_sha256=seg["sha256"]))
        return out

    def _write_segments(self, dataset: str, shards: Sequence[ShardEntry]) -> list[dict[str, Any]]:
        refs_out = []
        for part in chunk(shards):
            sha, data = encode_segment(part)
            key = f"datasets/{dataset}/segments/{sha}.parquet"
            self.objects.put_if_absent(key, data)
            ref = SegmentRef(key=key, sha256=sha, shards=len(part), rows=sum(e.rows for e in part),
                             bytes=sum(e.bytes for e in part))
            refs_out.append(ref.__dict__)
        return refs_out

    def _publish_version(
        self,
        *,
        dataset: str,
        kind: str,
        branch: str,
        parent_id: str | None,
        shards: Sequence[ShardEntry],
        tables: dict[str, list[ShardEntry]],
        schema: dict[str, Any] | None,
        message: str,
        author: str,
        lineage: dict[str, Any],
        metadata: dict[str, Any],
        catalog_writes: Sequence[Callable[[Connection, VersionInfo], None]] = (),
    ) -> VersionInfo:
        """Write segments and manifest, then insert the version and CAS the branch head (one DB txn).

        ``catalog_writes`` run inside that same database transaction (see ``Transaction.add_catalog_write``).
        """
        tokens = sum(e.tokens or 0 for e in shards) if kind == "tokens" else None
        body = {
            "v": MANIFEST_FORMAT_VERSION,
            "dataset": dataset,
            "kind": kind,
            "parents": [parent_id] if parent_id else [],
            "schema": schema,
            "segments": self._write_segments(dataset, shards),
            "tables": {name: self._write_segments(dataset, ents) for name, ents in sorted(tables.items())},
            "stats": {"rows": sum(e.rows for e in shards), "bytes": sum(e.bytes for e in shards),
                      "shards": len(shards), "tokens": tokens},
            "message": message,
            "author": author,
            "lineage": json.loads(canonical_json(lineage)),
            "metadata": json.loads(canonical_json(metadata)),
        }
        vid = version_id_of(body)
        created = time.time()
        key = f"datasets/{dataset}/manifests/{vid}.json"
        if not self.objects.exists(key):
            self.objects.put_bytes(key, envelope(vid, body, created))
        else:
            _, _, created = parse_envelope(self.objects.get_bytes(key), key=key)
        info = VersionInfo(
            id=vid, dataset=dataset, kind=kind, parents=body["parents"], num_rows=body["stats"]["rows"],
            num_bytes=body["stats"]["bytes"], num_shards=len(shards), num_tokens=tokens, message=message,
            author=author, created_at=created, manifest_key=key,
        )
        with self.catalog.write() as conn:
            R.insert_version(conn, info)
            R.move_ref(conn, dataset, "branch", branch, expected=parent_id, new=vid, action="commit", actor=author)
            for write in catalog_writes:
                write(conn, info)
        self._inherit(dataset, lineage)
        return info

    def _inherit(self, dataset: str, lineage: dict[str, Any]) -> None:
        """Derived data inherits its sources' restrictions: merge the policies of the datasets named by the
        lineage (``inputs``/``input_version`` version ids, ``input_dataset``/``source`` names) into ``dataset``'s."""
        ids, names = lineage_sources(lineage)
        sources = set(names)
        if ids:
            with self.catalog.read() as conn:
                for vid in ids:
                    try:
                        sources.add(R.get_version(conn, vid).dataset)
                    except NotFoundError:
                        continue
        sources.discard(dataset)
        derive = getattr(self.hooks, "derive", None)
        if sources and derive is not None:
            derive(self, dataset, sorted(sources))

    # -- writing --------------------------------------------------------------------------------
    def transaction(self, dataset: str, *, branch: str | None = None, mode: Mode = "append") -> Transaction:
        """Start a commit to ``dataset@branch`` (see :class:`Transaction`)."""
        self.hooks.authorize("write", dataset)
        return Transaction(self, dataset, branch=branch, mode=mode)

    def commit_table(self, dataset: str, table: pa.Table, *, message: str = "", mode: Mode = "append",
                     branch: str | None = None, **kwargs: Any) -> VersionInfo:
        """Shortcut: one transaction that writes ``table`` and commits."""
        with self.transaction(dataset, branch=branch, mode=mode) as txn:
            txn.write(table)
            return txn.commit(message=message, **kwargs)

    def write_shard(self, dataset: str, table: pa.Table, *, _staging: Path | None = None) -> ShardEntry:
        """Write one document (or table) shard (any process) and publish it; reference it later with ``add_shards``."""
        import pyarrow.parquet as pq

        from granary.store.formats.parquet import check_document_schema, check_table_schema

        table_kind = self.dataset(dataset).kind == "table"
        schema = (check_table_schema if table_kind else check_document_schema)(table.schema)
        table = table.cast(schema)
        staging = _staging or self.objects.staging_dir(f"shard-{uuid.uuid4().hex}")
        path = staging / f"{uuid.uuid4().hex}.parquet"
        try:
            rows_per_group = max(1, int(table.num_rows * self.settings.row_group_bytes / max(table.nbytes, 1)))
            pq.write_table(table, path, compression="zstd", compression_level=3, row_group_size=rows_per_group,
                           write_statistics=True if table_kind else ["id"])
            groups = -(-table.num_rows // rows_per_group) if table.num_rows else 0
            return publish(self.objects, self.hooks, dataset, path, fmt="parquet", rows=table.num_rows,
                           meta={"raw_bytes": table.nbytes, "row_groups": groups})
        finally:
            if _staging is None:
                self.objects.remove_staging(staging.name)

    def write_token_shard(self, dataset: str, documents: Iterable[np.ndarray], *, dtype: str = "uint16",
                          block_bytes: int = DEFAULT_BLOCK_BYTES, _staging: Path | None = None) -> ShardEntry:
        """Write one token shard from documents (1-D arrays) in blocks of ``block_bytes`` (1-4 MiB) and publish it."""
        staging = _staging or self.objects.staging_dir(f"shard-{uuid.uuid4().hex}")
        path = staging / f"{uuid.uuid4().hex}.tok"
        try:
            with TokenShardWriter(path, dtype=dtype, block_bytes=block_bytes) as w:
                for doc in documents:
                    w.add(doc)
                facts = w.close()
            return publish(self.objects, self.hooks, dataset, path, fmt="tokens", rows=facts["docs"],
                           tokens=facts["tokens"],
                           meta={"dtype": np.dtype(dtype).name, "block_tokens": facts["block_tokens"],
                                 "blocks": facts["blocks"], "docs": facts["docs"]})
        finally:
            if _staging is None:
                self.objects.remove_staging(staging.name)

    def write_blob(self, dataset: str, path: Path, *, name: str) -> ShardEntry:
        """Publish one opaque file (a checkpoint's file, named ``name`` inside it) of a ``checkpoint`` dataset.

        The file is moved into content-addressed storage, invisible until a commit references it
        (``Transaction.add_shards``); a crash before the commit leaves an unreferenced object for ``gc``.
        """
        info = self.dataset(dataset)
        if info.kind != "checkpoint":
            raise StoreError(f"dataset {dataset} holds {info.kind}; blobs belong to checkpoint datasets")
        self.hooks.authorize("write", dataset)
        return publish(self.objects, self.hooks, dataset, Path(path), fmt="blob", rows=0, meta={"name": name})

    # -- reading --------------------------------------------------------------------------------
    def read_shard(self, entry: ShardEntry, *, columns: list[str] | None = None, verify: bool = True) -> pa.Table:
        """One document shard, checksum verified (a data read of its dataset: authorised and audited)."""
        self.gate.shard(entry.key)
        return read_shard(self.objects, self.hooks, entry, columns=columns, verify=verify)

    def iter_batches(self, ref: str | VersionInfo, *, columns: list[str] | None = None, batch_rows: int = 8192,
                     verify: bool = True, purpose: str | None = None) -> Iterator[pa.RecordBatch]:
        """Stream a documents version in record batches (bounded memory)."""
        manifest = self._readable(ref, purpose)
        for entry in manifest.shards:
            yield from iter_shard_batches(self.objects, self.hooks, entry, columns=columns, batch_rows=batch_rows,
                                          verify=verify)

    def read_table(self, ref: str | VersionInfo, *, columns: list[str] | None = None,
                   purpose: str | None = None) -> pa.Table:
        """A whole documents version as one table."""
        manifest = self._readable(ref, purpose)
        tables = [read_shard(self.objects, self.hooks, e, columns=columns) for e in manifest.shards]
        if not tables:
            schema = manifest.schema
            if schema is not None and columns:
                schema = pa.schema([schema.field(c) for c in columns])
            return (schema or pa.schema([("id", pa.string()), ("text", pa.string())])).empty_table()
        return pa.concat_tables(tables)

    def read_side_table(self, ref: str | VersionInfo, name: str, *, purpose: str | None = None) -> pa.Table | None:
        """A side table (``quarantine``, ``rejected``, ...) of a version, or None if it has none."""
        manifest = self._readable(ref, purpose)
        entries = manifest.tables.get(name)
        if not entries:
            return None
        return pa.concat_tables([read_shard(self.objects, self.hooks, e) for e in entries],
                                promote_options="default")

    def open_version(self, ref: str | VersionInfo, *, purpose: str | None = None) -> Manifest:
        """The manifest of a version that is about to be read: authorized (with the declared purpose) and audited.

        Readers that fetch shards themselves (the streaming loader, tokenization) start here rather than at
        :meth:`manifest`, which only describes a version; their shard reads are then not decided again.
        """
        return self._readable(ref, purpose)

    def _readable(self, ref: str | VersionInfo, purpose: str | None, *, action: str = "read") -> Manifest:
        version = self._resolve(ref)
        self.gate.allow(action, version.dataset, version=version.id, purpose=purpose)
        return self._manifest(version)

    def _read_shard(self, entry: ShardEntry, *, columns: list[str] | None = None) -> pa.Table:
        """A shard without a read decision: for the store's write paths and governance (forget), which
        authorise their own action (write, forget) before they open anything."""
        return read_shard(self.objects, self.hooks, entry, columns=columns)

    def open_object(self, entry: ShardEntry | str) -> IO[bytes]:
        """Open a stored dataset object (a shard entry is decrypted transparently); a data read."""
        key = entry.key if isinstance(entry, ShardEntry) else entry
        self.gate.shard(key)
        if isinstance(entry, ShardEntry):
            return open_plain(self.objects, self.hooks, entry)
        return self.objects.open(entry)

    def object_bytes(self, entry: ShardEntry | str) -> bytes:
        """A whole stored object's (plaintext) bytes."""
        with self.open_object(entry) as f:
            return f.read()

    def local_path(self, entry: ShardEntry) -> str | None:
        """A local filesystem path of an unencrypted shard on a local store (for memory mapping); a data read."""
        self.gate.shard(entry.key)
        if "enc" in entry.meta:
            return None
        return self.objects.local_path(entry.key)

    # -- maintenance (implemented in their own modules) ----------------------------------------
    def diff(self, a: str, b: str, **kwargs: Any) -> Any:
        """Shards, rows and schema that differ between two versions (see granary.store.diff)."""
        from granary.store.diff import diff

        return diff(self, a, b, **kwargs)

    def export(self, ref: str, path: str | Path, **kwargs: Any) -> int:
        """Write a documents version to a file (see granary.store.export); authorised as an export."""
        from granary.store.export import export

        return export(self, ref, path, **kwargs)

    def verify(self, ref: str | None = None, **kwargs: Any) -> Any:
        """Recompute checksums (see granary.store.verify)."""
        from granary.store.verify import verify

        return verify(self, ref, **kwargs)

    def retire(self, dataset: str, version_ids: list[str], *, reason: str, dry_run: bool = False) -> Any:
        """Retire checkpoint versions that nothing needs any more (see granary.store.retire); ``gc`` frees them."""
        from granary.store.retire import retire

        return retire(self, dataset, version_ids, reason=reason, dry_run=dry_run)

    def gc(self, **kwargs: Any) -> Any:
        """Delete unreferenced objects (see granary.store.gc)."""
        from granary.store.gc import collect

        return collect(self, **kwargs)


def open_store(settings: Settings | None = None, *, hooks: StoreHooks | None = None) -> Store:
    """Open the store described by ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    return Store(settings, hooks=hooks)  # no hooks: the security layer when asked for or in use

