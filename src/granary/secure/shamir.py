"""Shamir t-of-n secret sharing of byte strings (pycryptodome's Shamir over GF(2^128), one 16-byte block at a time).

A secret of 16·k bytes is cut into k blocks; each block is shared with its own random polynomial of degree t-1,
and holder i (1-based) gets the concatenation of its k block shares. Any t shares give the secret back; fewer give
no information about it (each block's share set is a perfect t-of-n scheme). pycryptodome's ``combine`` returns
garbage rather than an error when it gets fewer than t shares, so :func:`combine` counts them first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from granary.secure.errors import SecAggError

BLOCK = 16


def _shamir() -> Any:
    try:
        from Crypto.Protocol.SecretSharing import Shamir
    except ImportError:
        from granary.errors import MissingDependencyError

        raise MissingDependencyError("pycryptodome", "privacy") from None
    return Shamir


def split(secret: bytes, *, threshold: int, holders: int) -> dict[int, bytes]:
    """Shares of ``secret`` (a multiple of 16 bytes) for holders 1..``holders``; any ``threshold`` recover it."""
    if len(secret) == 0 or len(secret) % BLOCK:
        raise SecAggError(f"a shared secret is a non-empty multiple of {BLOCK} bytes, got {len(secret)}")
    if not 2 <= threshold <= holders:
        raise SecAggError(f"a {threshold}-of-{holders} sharing is not possible: need 2 <= threshold <= holders")
    shamir = _shamir()
    out: dict[int, list[bytes]] = {i: [] for i in range(1, holders + 1)}
    for start in range(0, len(secret), BLOCK):
        for index, share in shamir.split(threshold, holders, secret[start:start + BLOCK]):
            out[int(index)].append(bytes(share))
    return {i: b"".join(parts) for i, parts in out.items()}


def combine(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (holder index -> share); fewer is an error, never a guess."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot recover a {threshold}-of-n secret")
    chosen = sorted(shares.items())[:threshold]
    sizes = {len(s) for _, s in chosen}
    if len(sizes) != 1 or next(iter(sizes)) % BLOCK or any(i < 1 for i, _ in chosen):
        raise SecAggError("shares of one secret must have equal lengths (a multiple of 16) and indices >= 1")
    shamir = _shamir()
    size = next(iter(sizes))
    return b"".join(bytes(shamir.combine([(i, s[start:start + BLOCK]) for i, s in chosen]))
                    for start in range(0, size, BLOCK))
