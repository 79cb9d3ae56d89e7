"""Options shared by several command groups."""

from __future__ import annotations

import os
from typing import Annotated

import typer

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
