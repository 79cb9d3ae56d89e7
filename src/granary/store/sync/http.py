"""A remote served by another site's ``granary server``: the same bare repository as a folder remote, over HTTP.

The server keeps the repository (``GRANARY_SYNC_REPO``, default ``<home>/sync-repo``) and exposes it under
``/api/v1/sync``; every call carries the caller's API token and is authorised and audited there. The protocol is
the folder remote's, call for call: objects are content-addressed and checked on arrival by the server (a body
that does not hash to its key is refused and never appears), refs move by compare-and-swap (``409`` when the
branch moved), and ``flush`` makes the objects durable before a ref that reaches them moves.

The token comes from the remote's options (``token_env``: the name of an environment variable, default
``GRANARY_REMOTE_TOKEN``), never from the catalog: a remote's options are readable by every catalog user.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any, cast
from urllib.parse import quote

from granary.errors import MissingDependencyError, SyncError
from granary.store.names import check_dataset_name, check_ref_name
from granary.store.sync.remote import RemoteRef, moved_error

API = "/api/v1/sync"
SPOOL_BYTES = 8 * 1024 * 1024
TIMEOUT_S = 60.0


class HttpRemote:
    """The bare repository of a Granary server at ``url`` (``http://host:port`` or ``https://...``).

    Args:
        url: the server's base URL (as ``granary server`` prints it).
        options: ``token_env`` (environment variable holding the API token), ``verify`` (TLS verification:
            ``"false"`` or a CA bundle path), ``timeout_s``.
    """

    is_local = False

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - httpx comes with the server extra
            raise MissingDependencyError("httpx", "server") from exc
        self.url = url.rstrip("/")
        self.options = dict(options or {})
        token = os.environ.get(str(self.options.get("token_env", "GRANARY_REMOTE_TOKEN")))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: Any = self.options.get("verify", True)
        if verify in ("false", "0", "no"):
            verify = False
        self._http = httpx.Client(base_url=self.url + API, headers=headers, verify=verify,
                                  timeout=float(self.options.get("timeout_s", TIMEOUT_S)),
                                  limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))
        self._httpx = httpx
        self._call("GET", "/datasets")  # fails now, with the server's reason, when the URL or token is wrong

    def __repr__(self) -> str:
        return f"HttpRemote({self.url!r})"

    def close(self) -> None:
        self._http.close()

    # -- calls ------------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except self._httpx.HTTPError as exc:
            raise SyncError(f"remote {self.url} could not be reached ({exc.__class__.__name__}: {exc})",
                            hint="check that `granary server` runs there and the URL is right") from None
        if resp.status_code not in ok:
            raise _failure(self.url, method, path, resp)
        return resp

    # -- objects ----------------------------------------------------------------------------------------------
    def list_objects(self, prefix: str) -> dict[str, int]:
        """Every object under the folder ``prefix`` with its size (one call)."""
        return {str(k): int(v) for k, v in self._call("GET", "/objects", params={"prefix": prefix}).json().items()}

    def open_object(self, key: str) -> IO[bytes]:
        """A streaming reader of a remote object."""
        request = self._http.build_request("GET", f"/objects/{quote(key)}")
        resp = self._http.send(request, stream=True)
        if resp.status_code != 200:
            resp.read()
            resp.close()
            if resp.status_code == 404:
                raise SyncError(f"object {key} is missing on remote {self.url}",
                                hint="the remote is damaged or was pruned; push the version again from a store "
                                     "that has it")
            raise _failure(self.url, "GET", f"/objects/{key}", resp)
        return cast(IO[bytes], _ResponseReader(resp))

    def get_object(self, key: str) -> bytes:
        """A whole remote object."""
        with self.open_object(key) as f:
            return f.read()

    def has_object(self, key: str) -> bool:
        """Whether the remote holds ``key``."""
        return self._call("HEAD", f"/objects/{quote(key)}", ok=(200, 404)).status_code == 200

    def delete_object(self, key: str) -> None:
        """Remove an object (the data of a forgotten version; the server requires ``forget`` rights)."""
        self._call("DELETE", f"/objects/{quote(key)}", ok=(200, 404))

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """A file to write object ``key`` into; it is sent when the block exits cleanly, and the server keeps it
        only if it hashes to its key."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as buf:
            yield buf
            size = buf.tell()
            buf.seek(0)
            self._call("PUT", f"/objects/{quote(key)}", ok=(200, 201), content=_chunks(buf),
                       headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})

    def flush(self) -> None:
        """Make every object sent so far durable on the server."""
        self._call("POST", "/flush")

    # -- dataset records --------------------------------------------------------------------------------------
    def datasets(self) -> list[str]:
        return [str(n) for n in self._call("GET", "/datasets").json()]

    def dataset_record(self, dataset: str) -> dict[str, Any] | None:
        check_dataset_name(dataset)
        resp = self._call("GET", f"/datasets/{dataset}", ok=(200, 404))
        return None if resp.status_code == 404 else dict(resp.json())

    def put_dataset_record(self, dataset: str, record: dict[str, Any]) -> None:
        check_dataset_name(dataset)
        self._call("PUT", f"/datasets/{dataset}", json=record)

    def audit_sites(self, dataset: str) -> list[str]:
        check_dataset_name(dataset)
        return [str(x) for x in self._call("GET", f"/audit/{dataset}").json()]

    def get_audit(self, dataset: str, site: str) -> bytes:
        check_dataset_name(dataset)
        return bytes(self._call("GET", f"/audit/{dataset}/{quote(site)}").content)

    def put_audit(self, dataset: str, site: str, blob: bytes) -> None:
        check_dataset_name(dataset)
        self._call("PUT", f"/audit/{dataset}/{quote(site)}", content=blob,
                   headers={"Content-Type": "application/octet-stream"})

    def put_file(self, path: str, data: bytes) -> None:
        raise SyncError(f"a Granary server ({self.url}) takes datasets, not backup files",
                        hint="back up to a folder or an s3:// URL; push datasets to the server")

    # -- refs -------------------------------------------------------------------------------------------------
    def branches(self, dataset: str) -> dict[str, str]:
        check_dataset_name(dataset)
        return {str(k): str(v) for k, v in self._call("GET", f"/refs/{dataset}").json().items()}

    def tags(self, dataset: str) -> dict[str, str]:
        check_dataset_name(dataset)
        return {str(k): str(v) for k, v in self._call("GET", f"/tags/{dataset}").json().items()}

    def create_tag(self, dataset: str, tag: str, version_id: str) -> str:
        check_dataset_name(dataset)
        check_ref_name(tag, "tag")
        body = self._call("PUT", f"/tags/{dataset}/{quote(tag)}", json={"version_id": version_id}).json()
        return str(body["version_id"])

    def read_ref(self, dataset: str, branch: str) -> RemoteRef:
        check_dataset_name(dataset)
        check_ref_name(branch)
        body = self._call("GET", f"/refs/{dataset}/{quote(branch)}").json()
        return RemoteRef(body.get("version_id"), body.get("token"))

    def cas_ref(self, dataset: str, branch: str, *, expected: RemoteRef, new: str) -> None:
        check_dataset_name(dataset)
        check_ref_name(branch)
        resp = self._call("PUT", f"/refs/{dataset}/{quote(branch)}", ok=(200, 409),
                          json={"expected": expected.version_id, "new": new})
        if resp.status_code == 409:
            raise moved_error(dataset, branch, expected.version_id, resp.json().get("actual"))


class _ResponseReader(io.RawIOBase):
    """A file-like view of a streamed response body (``read(n)`` as the transfer loop uses it)."""

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self._it = resp.iter_bytes()
        self._buf = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            chunk = next(self._it, b"")
            if not chunk:
                break
            self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def close(self) -> None:
        if not self.closed:
            self._resp.close()
        super().close()


def _chunks(f: IO[bytes], size: int = 1024 * 1024) -> Iterator[bytes]:
    while chunk := f.read(size):
        yield chunk


def _failure(url: str, method: str, path: str, resp: Any) -> SyncError:
    try:
        body = resp.json()
        detail = body.get("detail") or body.get("title") or str(body)
        hint = body.get("hint")
    except ValueError:
        detail, hint = resp.text[:300], None
    if resp.status_code == 401:
        hint = "set the server's API token in GRANARY_REMOTE_TOKEN (or the variable the remote's token_env names)"
    return SyncError(f"remote {url} refused {method} {API}{path} ({resp.status_code}): {detail}",
                     hint=hint or "see the server's log")
