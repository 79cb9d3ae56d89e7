"""Named remotes kept in the catalog, so every user of a shared catalog sees the same names."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import sqlalchemy as sa

from granary.errors import AlreadyExistsError, NotFoundError
from granary.store.sync.remote import Repository, make_remote
from granary.store.sync.tables import remotes

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def add_remote(store: Any, name: str, url: str, *, options: dict[str, str] | None = None,
               replace: bool = False) -> dict[str, Any]:
    """Record ``name`` -> ``url`` (a local path or an fsspec URL); the remote is created (and checked) at once."""
    if not _NAME.match(name):
        raise ValueError(f"remote name {name!r} must start with a letter and hold only letters, digits, '_', '.', "
                         "'-' (at most 64)")
    store.hooks.authorize("remote", "*")
    make_remote(url, options=options)  # fails now, not at the first push, when the URL is unusable
    row = {"name": name, "url": url, "options": json.dumps(options or {}, sort_keys=True),
           "created_at": time.time(), "created_by": store.settings.author}
    with store.catalog.write() as conn:
        exists = conn.execute(sa.select(remotes.c.name).where(remotes.c.name == name)).first()
        if exists and not replace:
            raise AlreadyExistsError(f"remote {name!r} already exists",
                                     hint=f"remove it first (`granary remote remove {name}`) or pick another name")
        if exists:
            conn.execute(remotes.delete().where(remotes.c.name == name))
        conn.execute(remotes.insert().values(**row))
    store.hooks.record("remote-add", "*", details={"name": name, "url": url})
    return {k: v for k, v in row.items() if k != "options"}


def list_remotes(store: Any) -> list[dict[str, Any]]:
    """Every named remote."""
    with store.catalog.read() as conn:
        rows = conn.execute(sa.select(remotes).order_by(remotes.c.name)).all()
    return [{"name": r.name, "url": r.url, "created_at": r.created_at, "created_by": r.created_by} for r in rows]


def remove_remote(store: Any, name: str) -> None:
    """Forget a named remote (nothing on the remote is touched)."""
    store.hooks.authorize("remote", "*")
    with store.catalog.write() as conn:
        gone = conn.execute(remotes.delete().where(remotes.c.name == name)).rowcount
    if not gone:
        raise NotFoundError(f"no remote named {name!r}", hint="list them with `granary remote list`")
    store.hooks.record("remote-remove", "*", details={"name": name})


def open_remote(store: Any, name_or_url: str) -> Repository:
    """The remote recorded as ``name_or_url``, else the URL itself."""
    with store.catalog.read() as conn:
        row = conn.execute(sa.select(remotes).where(remotes.c.name == name_or_url)).first()
    if row is not None:
        return make_remote(row.url, options=json.loads(row.options))
    if _NAME.match(name_or_url) and "/" not in name_or_url and ":" not in name_or_url:
        raise NotFoundError(f"no remote named {name_or_url!r}",
                            hint=f"add it with `granary remote add {name_or_url} URL`, or give a path or s3:// URL")
    return make_remote(name_or_url, options=_env_options(name_or_url))


def _env_options(url: str) -> dict[str, str]:
    import os

    if url.startswith("s3://") and os.environ.get("GRANARY_S3_ENDPOINT_URL"):
        return {"endpoint_url": os.environ["GRANARY_S3_ENDPOINT_URL"]}
    return {}
