"""Options shared by several command groups."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from granary.store import Store

EncryptOpt = Annotated[
    bool,
    typer.Option("--encrypt", help="Encrypt the new shards at rest (AES-256-GCM envelope encryption; see "
                                   "docs/security.md). Same as GRANARY_ENCRYPT=1."),
]


def apply_encrypt(encrypt: bool) -> None:
    """Turn on shard encryption for this command and the worker processes it starts.

    The setting travels in the environment so that every process of the job (pool workers, Ray tasks
    on this node) opens the store with the security layer and encrypts what it writes.
    """
    if encrypt:
        os.environ["GRANARY_ENCRYPT"] = "1"


PurposeOpt = Annotated[
    str | None,
    typer.Option("--purpose", help="Why you read the data (checked against the dataset's policy, recorded in the "
                                   "audit log). Same as GRANARY_PURPOSE."),
]


def read_store(purpose: str | None = None) -> Store:
    """The store bound to the caller (GRANARY_TOKEN in multi-user mode) and the declared purpose.

    The purpose also travels in the environment, so worker processes a command starts read for it too.
    """
    from granary.store import open_store

    if purpose:
        os.environ["GRANARY_PURPOSE"] = purpose
    store = open_store()
    return store.bind(purpose=purpose) if purpose else store
