"""Object storage over fsspec: a local directory by default, ``s3://`` through the same code path."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from granary.errors import MissingDependencyError, NotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key relative to the root, size and modification time (epoch seconds)."""

    key: str
    size: int
    mtime: float


class ObjectStore:
    """Immutable-object storage rooted at a URL.

    Keys are ``/``-separated paths relative to the root. Writes are atomic: a local write goes to a
    temporary file and is renamed into place; a remote write is a single PUT (conditional where the
    backend supports ``If-None-Match``).

    Args:
        url: a local path or an fsspec URL such as ``s3://bucket/prefix``.
        options: fsspec storage options (``endpoint_url``, credentials, ...).
        local_staging: where remote stores stage files before upload.
    """

    def __init__(self, url: str, *, options: dict[str, Any] | None = None, local_staging: Path) -> None:
        self.url = url
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        except ImportError as exc:
            raise MissingDependencyError("s3fs", "s3") from exc
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            self._staging_root = Path(self.root) / "staging"
        else:
            self._staging_root = local_staging
        self._staging_root.mkdir(parents=True, exist_ok=True)

    # -- paths ---------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The backend path of a key."""
        return f"{self.root}/{key}"

    def local_path(self, key: str) -> str | None:
        """A local filesystem path for ``key`` when the store is local, else None."""
        return self.path(key) if self.is_local else None

    def staging_dir(self, txn_id: str) -> Path:
        """A fresh local directory where a transaction writes files before they are published."""
        d = self._staging_root / txn_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def staging_root(self) -> Path:
        """The local directory holding every transaction's staging directory."""
        return self._staging_root

    # -- writes --------------------------------------------------------------------------------
    def publish_file(self, local: Path, key: str) -> bool:
        """Move a finished local file to ``key``. Returns False if an identical object was already there.

        Keys are content addressed, so an existing object at ``key`` already holds these bytes.
        """
        if self.is_local:
            dest = Path(self.path(key))
            if dest.exists():
                local.unlink(missing_ok=True)
                return False
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, dest)
            return True
        if self.fs.exists(self.path(key)):
            local.unlink(missing_ok=True)
            return False
        self.fs.put_file(str(local), self.path(key))
        local.unlink(missing_ok=True)
        return True

    def put_bytes(self, key: str, data: bytes, *, fsync: bool = True) -> None:
        """Write ``data`` at ``key`` atomically (replacing what is there)."""
        if self.is_local:
            dest = Path(self.path(key))
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    if fsync:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return
        self.fs.pipe_file(self.path(key), data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write immutable ``data`` at ``key`` unless an object is there. Returns whether it wrote."""
        if self.exists(key):
            return False
        self.put_bytes(key, data)
        return True

    # -- reads ---------------------------------------------------------------------------------
    def open(self, key: str, mode: str = "rb", **kwargs: Any) -> IO[bytes]:
        """Open an object for reading (seekable)."""
        try:
            return self.fs.open(self.path(key), mode, **kwargs)
        except FileNotFoundError:
            raise NotFoundError(f"object {key} is missing from {self.url}",
                                hint="run `granary verify` to list missing objects") from None

    def get_bytes(self, key: str) -> bytes:
        """Read a whole object."""
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            raise NotFoundError(f"object {key} is missing from {self.url}",
                                hint="run `granary verify` to list missing objects") from None

    def exists(self, key: str) -> bool:
        """Whether an object exists at ``key``."""
        if self.is_local:
            return os.path.exists(self.path(key))
        return bool(self.fs.exists(self.path(key)))

    def size(self, key: str) -> int | None:
        """The size of an object in bytes, or None if it is missing."""
        if self.is_local:
            try:
                return os.stat(self.path(key)).st_size
            except FileNotFoundError:
                return None
        try:
            return int(self.fs.size(self.path(key)))
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with the folder ``prefix``."""
        base = self.path(prefix).rstrip("/")
        if self.is_local:
            if not os.path.isdir(base):
                return
            for dirpath, _dirs, files in os.walk(base):
                for fname in files:
                    full = os.path.join(dirpath, fname)
                    try:
                        st = os.stat(full)
                    except FileNotFoundError:
                        continue
                    yield ObjectInfo(os.path.relpath(full, self.root).replace(os.sep, "/"), st.st_size,
                                     st.st_mtime)
            return
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        for path, info in found.items():
            mtime = info.get("LastModified") or info.get("mtime") or time.time()
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            yield ObjectInfo(path[len(self.root) + 1:], int(info.get("size") or 0), float(mtime))

    def delete(self, key: str) -> None:
        """Delete an object (no error if it is already gone)."""
        if self.is_local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(key))
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def remove_staging(self, txn_id: str) -> None:
        """Remove a transaction's staging directory and everything in it."""
        shutil.rmtree(self._staging_root / txn_id, ignore_errors=True)

