"""A remote: a bare Granary repository (objects, refs, dataset records) on a local path or ``s3://``.

Layout under the remote's URL::

    objects/<key>                         the same content-addressed keys as the local object store
    refs/<dataset>/<branch>               one line: the version id the branch points at
    datasets/<dataset>.json               the dataset record (kind, default branch, description, metadata)

Objects are immutable and written atomically (a local temporary file renamed into place; one S3 PUT,
which becomes visible only when complete). Refs change only by compare-and-swap: on a local path
under an exclusive ``flock`` on ``refs/.lock``; on S3 with a conditional PUT (``If-Match`` on the
ETag the reader saw, ``If-None-Match: *`` to create).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import fsspec
import fsspec.asyn
from fsspec.implementations.local import LocalFileSystem

from granary.errors import MissingDependencyError, SyncError
from granary.store.names import check_dataset_name, check_ref_name

TMP_PREFIX = ".tmp-"
AUDIT_SUFFIX = ".jsonl.zst"
SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class RemoteRef:
    """A branch on a remote as read: its version (None when absent) and the token a CAS must present."""

    version_id: str | None
    token: str | None


class Repository(Protocol):
    """What push, pull and sync need of a remote: a folder or ``s3://`` :class:`Remote`, or a server's
    :class:`granary.store.sync.http.HttpRemote`."""

    url: str
    is_local: bool

    def list_objects(self, prefix: str) -> dict[str, int]: ...
    def open_object(self, key: str) -> IO[bytes]: ...
    def get_object(self, key: str) -> bytes: ...
    def has_object(self, key: str) -> bool: ...
    def delete_object(self, key: str) -> None: ...
    def writer(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]: ...
    def flush(self) -> None: ...
    def datasets(self) -> list[str]: ...
    def dataset_record(self, dataset: str) -> dict[str, Any] | None: ...
    def put_dataset_record(self, dataset: str, record: dict[str, Any]) -> None: ...
    def audit_sites(self, dataset: str) -> list[str]: ...
    def get_audit(self, dataset: str, site: str) -> bytes: ...
    def put_audit(self, dataset: str, site: str, blob: bytes) -> None: ...
    def branches(self, dataset: str) -> dict[str, str]: ...
    def tags(self, dataset: str) -> dict[str, str]: ...
    def create_tag(self, dataset: str, tag: str, version_id: str) -> str: ...
    def read_ref(self, dataset: str, branch: str) -> RemoteRef: ...
    def cas_ref(self, dataset: str, branch: str, *, expected: RemoteRef, new: str) -> None: ...


def make_remote(url: str, *, options: dict[str, Any] | None = None) -> Repository:
    """The remote at ``url``: a Granary server for ``http(s)://``, else a folder or fsspec URL."""
    if url.startswith(("http://", "https://")):
        from granary.store.sync.http import HttpRemote

        return HttpRemote(url, options=options)
    return Remote(url, options=options)


class Remote:
    """A bare repository at ``url`` (a local path or an fsspec URL such as ``s3://bucket/prefix``).

    Args:
        url: where the remote lives.
        options: fsspec storage options (``endpoint_url``, credentials, ...).
    """

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **self.options)
        except ImportError as exc:
            raise MissingDependencyError("s3fs", "s3") from exc
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        self._dirs: set[str] = set()  # object folders known to exist (one makedirs each, not one per object)
        if self.is_local:
            Path(self.root, "objects").mkdir(parents=True, exist_ok=True)
            Path(self.root, "refs").mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    # -- objects ----------------------------------------------------------------------------------
    def object_path(self, key: str) -> str:
        """The backend path of an object key."""
        return f"{self.root}/objects/{key}"

    def list_objects(self, prefix: str) -> dict[str, int]:
        """Every object under the folder ``prefix`` with its size (one listing, not one request per object)."""
        base = self.object_path(prefix).rstrip("/")
        out: dict[str, int] = {}
        strip = len(self.root) + len("/objects/")
        if self.is_local:
            if not os.path.isdir(base):
                return out
            for dirpath, _dirs, files in os.walk(base):
                for fname in files:
                    if fname.startswith(TMP_PREFIX):
                        continue
                    full = os.path.join(dirpath, fname)
                    with contextlib.suppress(FileNotFoundError):
                        out[full[strip:].replace(os.sep, "/")] = os.stat(full).st_size
            return out
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return out
        for path, info in found.items():
            out[path[strip:]] = int(info.get("size") or 0)
        return out

    def open_object(self, key: str) -> IO[bytes]:
        """Open a remote object for reading."""
        try:
            return self.fs.open(self.object_path(key), "rb")
        except FileNotFoundError:
            raise SyncError(f"object {key} is missing on remote {self.url}",
                            hint="the remote is damaged or was pruned; push the version again from a "
                                 "store that has it") from None

    def get_object(self, key: str) -> bytes:
        """A whole remote object."""
        with self.open_object(key) as f:
            return f.read()

    def has_object(self, key: str) -> bool:
        """Whether the remote holds ``key``."""
        return bool(self.fs.exists(self.object_path(key)))

    def delete_object(self, key: str) -> None:
        """Remove an object (the data of a forgotten version); absent is fine."""
        with contextlib.suppress(FileNotFoundError):
            if self.is_local:
                os.unlink(self.object_path(key))
            else:
                self.fs.rm_file(self.object_path(key))

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """A file to write object ``key`` into; it appears under its key only if the block exits cleanly.

        On a local path the rename makes it visible at once (a killed process never leaves a partial object) and
        :meth:`flush` makes every object durable in one call before a ref moves (one fsync per object made a
        10,000-object push 35% slower than one sync at the end).
        """
        path = self.object_path(key)
        if self.is_local:
            parent = os.path.dirname(path)
            if parent not in self._dirs:
                os.makedirs(parent, exist_ok=True)
                self._dirs.add(parent)
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=TMP_PREFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    yield f
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return
        # an S3 object (single or multipart upload) becomes visible only when the upload completes
        f = self.fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):
                f.discard() if hasattr(f, "discard") else None
            raise
        f.close()

    def flush(self) -> None:
        """Make every object written so far durable (a local path: the filesystem's pages on disk; S3: already)."""
        if self.is_local:
            os.sync()

    # -- dataset records ------------------------------------------------------------------------------
    def datasets(self) -> list[str]:
        """Names of the datasets the remote has a record of."""
        base = f"{self.root}/datasets"
        try:
            names = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        return sorted(os.path.basename(n)[:-5] for n in names if str(n).endswith(".json"))

    def dataset_record(self, dataset: str) -> dict[str, Any] | None:
        """The dataset record pushed to the remote, or None."""
        check_dataset_name(dataset)
        try:
            return json.loads(self.fs.cat_file(f"{self.root}/datasets/{dataset}.json"))
        except FileNotFoundError:
            return None

    def put_dataset_record(self, dataset: str, record: dict[str, Any]) -> None:
        """Write (or replace) a dataset record."""
        self.put_file(f"{self.root}/datasets/{dataset}.json", json.dumps(record, sort_keys=True, indent=1).encode())

    # -- audit records of the sites that pushed ---------------------------------------------------------------
    def audit_sites(self, dataset: str) -> list[str]:
        """Keys of the audit segments of ``dataset`` the remote holds (see :mod:`granary.store.sync.audits`)."""
        check_dataset_name(dataset)
        try:
            names = self.fs.ls(f"{self.root}/audit/{dataset}", detail=False)
        except FileNotFoundError:
            return []
        return sorted(os.path.basename(str(n))[:-len(AUDIT_SUFFIX)] for n in names
                      if str(n).endswith(AUDIT_SUFFIX))

    def get_audit(self, dataset: str, site: str) -> bytes:
        """One audit segment of ``dataset`` (zstd-compressed JSON lines)."""
        return bytes(self.fs.cat_file(self._audit_path(dataset, site)))

    def put_audit(self, dataset: str, site: str, blob: bytes) -> None:
        """Write one audit segment of ``dataset``."""
        self.put_file(self._audit_path(dataset, site), blob)

    def _audit_path(self, dataset: str, site: str) -> str:
        check_dataset_name(dataset)
        if not SITE_RE.match(site):
            raise SyncError(f"site name {site!r} is not valid", hint="site names hold letters, digits, '.', '_', '-'")
        return f"{self.root}/audit/{dataset}/{site}{AUDIT_SUFFIX}"

    def put_file(self, path: str, data: bytes) -> None:
        """Write (or replace) a small file at a backend path of this remote atomically (records, backup files)."""
        if self.is_local:
            _atomic_local(path, data)
        else:
            self.fs.pipe_file(path, data)

    # -- refs -----------------------------------------------------------------------------------------
    def _ref_path(self, dataset: str, branch: str) -> str:
        check_dataset_name(dataset)
        check_ref_name(branch)
        return f"{self.root}/refs/{dataset}/{branch}"

    def branches(self, dataset: str) -> dict[str, str]:
        """Every branch of ``dataset`` on the remote and its version id."""
        check_dataset_name(dataset)
        base = f"{self.root}/refs/{dataset}"
        try:
            paths = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return {}
        out = {}
        for p in paths:
            name = os.path.basename(str(p))
            if name.startswith(".") or name.startswith(TMP_PREFIX):
                continue
            ref = self.read_ref(dataset, name)
            if ref.version_id:
                out[name] = ref.version_id
        return out

    def tags(self, dataset: str) -> dict[str, str]:
        """Every tag of ``dataset`` on the remote and its version."""
        check_dataset_name(dataset)
        base = f"{self.root}/tags/{dataset}"
        try:
            paths = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return {}
        out = {}
        for p in paths:
            name = os.path.basename(str(p))
            if not name.startswith((".", TMP_PREFIX)):
                out[name] = bytes(self.fs.cat_file(f"{base}/{name}")).decode().strip()
        return out

    def create_tag(self, dataset: str, tag: str, version_id: str) -> str:
        """Create ``dataset@tag`` -> ``version_id`` unless the tag exists (tags never move); returns the version
        the tag names afterwards (another one when it already named another version)."""
        check_dataset_name(dataset)
        check_ref_name(tag, "tag")
        path = f"{self.root}/tags/{dataset}/{tag}"
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with self._ref_lock():
                if os.path.exists(path):
                    return Path(path).read_text().strip()
                _atomic_local(path, (version_id + "\n").encode())
            return version_id
        bucket, key = self._bucket, self._s3_key(path)

        async def put() -> None:
            client = await self.fs.set_session()
            await client.put_object(Bucket=bucket, Key=key, Body=(version_id + "\n").encode(), IfNoneMatch="*")

        from botocore.exceptions import ClientError

        try:
            fsspec.asyn.sync(self.fs.loop, put)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            return bytes(self.fs.cat_file(path)).decode().strip()
        return version_id

    def read_ref(self, dataset: str, branch: str) -> RemoteRef:
        """The version a remote branch points at, with the token a later CAS must present."""
        path = self._ref_path(dataset, branch)
        if self.is_local:
            try:
                value = Path(path).read_text().strip()
            except FileNotFoundError:
                return RemoteRef(None, None)
            return RemoteRef(value or None, value)
        bucket, key = self._bucket, self._s3_key(path)

        async def get() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            async with resp["Body"] as stream:
                return await stream.read(), resp["ETag"]

        try:
            body, etag = fsspec.asyn.sync(self.fs.loop, get)
        except FileNotFoundError:
            return RemoteRef(None, None)
        return RemoteRef(body.decode().strip() or None, etag)

    def cas_ref(self, dataset: str, branch: str, *, expected: RemoteRef, new: str) -> None:
        """Point ``dataset@branch`` at ``new`` if it still is what ``expected`` saw; else raise SyncError."""
        path = self._ref_path(dataset, branch)
        data = (new + "\n").encode()
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with self._ref_lock():
                current = self.read_ref(dataset, branch)
                if current.version_id != expected.version_id:
                    raise moved_error(dataset, branch, expected.version_id, current.version_id)
                _atomic_local(path, data)
            return
        extra = {"IfNoneMatch": "*"} if expected.token is None else {"IfMatch": expected.token}
        bucket, key = self._bucket, self._s3_key(path)

        async def put() -> None:
            client = await self.fs.set_session()
            await client.put_object(Bucket=bucket, Key=key, Body=data, **extra)

        from botocore.exceptions import ClientError

        try:
            fsspec.asyn.sync(self.fs.loop, put)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise moved_error(dataset, branch, expected.version_id, self.read_ref(dataset, branch).version_id) \
                    from None
            raise

    @contextlib.contextmanager
    def _ref_lock(self) -> Iterator[None]:
        with open(os.path.join(self.root, "refs", ".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def _bucket(self) -> str:
        return self.root.split("/", 1)[0]

    def _s3_key(self, path: str) -> str:
        return path.split("/", 1)[1]


def moved_error(dataset: str, branch: str, expected: str | None, actual: str | None) -> SyncError:
    return SyncError(f"remote branch {dataset}@{branch} moved while pushing (expected {_s(expected)}, found "
                     f"{_s(actual)}): another push won the race; nothing was changed by this one",
                     hint="pull, then push again")


def _s(vid: str | None) -> str:
    return "nothing" if vid is None else vid[:12]


def _atomic_local(path: str, data: bytes) -> None:
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SyncError(f"no space left writing {path}: {exc.strerror}; it was not changed",
                            hint="free space (or grow the volume) and run the same command again") from exc
        raise

