"""Secure aggregation by pairwise masking: the aggregator learns the sum of the clients' vectors and nothing else.

Each client of a round makes an X25519 key pair and publishes the public half. Every pair of clients (i, j)
derives the same 256-bit seed from their Diffie-Hellman secret (HKDF-SHA256, bound to the round) and expands it
with AES-256-CTR into a mask vector; the lower-named client adds the mask, the other subtracts it. Inputs are
encoded as fixed-point integers modulo 2**64, so the masks cancel *exactly* in the sum and the sum of masked
vectors is the sum of the encoded inputs, bit for bit.

Dropout: when a client that published its key sends no masked vector, every survivor reveals the seeds it shares
with the dropped clients (only those), the aggregator removes those masks from the survivors' vectors, and the
sum of the survivors comes out. Revealing a seed of a dropped client exposes nothing of a survivor (its other
masks stay in place). This is the simple recovery of the SecAgg family without self-masks: it assumes the
aggregator follows the protocol (does not claim a client dropped after receiving its vector); see
docs/privacy.md for the threat model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from granary.secure.errors import SecAggError

FRAC_BITS = 24  # fixed-point resolution 2**-24 (about 6e-8)
_INFO = b"granary-secagg-v1"


def max_abs(num_clients: int, frac_bits: int = FRAC_BITS) -> float:
    """The largest |value| a client may encode so a sum over ``num_clients`` cannot wrap around 2**63."""
    return float(2 ** (62 - frac_bits)) / max(1, num_clients)


def encode(values: np.ndarray, *, num_clients: int, frac_bits: int = FRAC_BITS) -> np.ndarray:
    """Fixed-point encode floats as uint64 (two's complement), refusing values that could overflow the sum."""
    x = np.asarray(values, dtype=np.float64).ravel()
    limit = max_abs(num_clients, frac_bits)
    if not np.all(np.isfinite(x)):
        raise SecAggError("the vector to mask holds NaN or infinite values", hint="check the local update")
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > limit:
        raise SecAggError(f"a value of magnitude {peak:.3g} exceeds the fixed-point range {limit:.3g} for "
                          f"{num_clients} clients", hint="bound the update norm (norm_bound) before masking")
    return np.rint(x * float(2**frac_bits)).astype(np.int64).view(np.uint64)


def decode(total: np.ndarray, *, frac_bits: int = FRAC_BITS) -> np.ndarray:
    """Inverse of :func:`encode` for a sum of encoded vectors."""
    return np.asarray(total, dtype=np.uint64).view(np.int64).astype(np.float64) / float(2**frac_bits)


def expand(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random uint64 words from a 32-byte seed (AES-256-CTR keystream)."""
    if len(seed) != 32:
        raise SecAggError(f"a pairwise seed is 32 bytes, got {len(seed)}")
    enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    return np.frombuffer(enc.update(bytes(8 * length)) + enc.finalize(), dtype=np.uint64).copy()


def _pair_seed(private: X25519PrivateKey, peer_public: bytes, round_id: str, a: str, b: str) -> bytes:
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise SecAggError(f"public key of {b if a < b else a} is malformed: {exc}") from None
    lo, hi = sorted((a, b))
    salt = hashlib.sha256(f"{round_id}\0{lo}\0{hi}".encode()).digest()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(shared)


def _sign(me: str, peer: str) -> int:
    return 1 if me < peer else -1


class MaskingClient:
    """One client's side of a masked round.

    Args:
        name: this client's unique name in the round.
        round_id: binds the pairwise seeds to this round (a seed is never reused across rounds).
    """

    def __init__(self, name: str, round_id: str) -> None:
        self.name = name
        self.round_id = round_id
        self._private = X25519PrivateKey.generate()
        self._seeds: dict[str, bytes] = {}

    def public_key(self) -> bytes:
        """The 32-byte public key to publish through the aggregator."""
        return self._private.public_key().public_bytes_raw()

    def mask(self, values: np.ndarray, peers: Mapping[str, bytes], *, frac_bits: int = FRAC_BITS) -> np.ndarray:
        """The masked, encoded vector to send (``peers``: every participant's public key, this one included)."""
        if self.name not in peers:
            raise SecAggError(f"{self.name} is not among the round's participants {sorted(peers)}")
        out = encode(values, num_clients=len(peers), frac_bits=frac_bits)
        self._seeds = {p: _pair_seed(self._private, key, self.round_id, self.name, p)
                       for p, key in peers.items() if p != self.name}
        with np.errstate(over="ignore"):
            for peer, seed in self._seeds.items():
                m = expand(seed, out.size)
                out = out + m if _sign(self.name, peer) > 0 else out - m
        return out

    def reveal(self, dropped: Iterable[str]) -> dict[str, bytes]:
        """The seeds shared with ``dropped`` participants (never this client's own, never a live peer's)."""
        dropped = set(dropped)
        if self.name in dropped:
            raise SecAggError(f"{self.name} was declared dropped but is answering; refusing to reveal")
        unknown = dropped - set(self._seeds)
        if unknown:
            raise SecAggError(f"cannot reveal seeds for {sorted(unknown)}: not participants of this round")
        return {p: self._seeds[p] for p in sorted(dropped)}


class MaskedSum:
    """The aggregator's side: collects masked vectors, removes the masks of dropped clients, returns the sum.

    Args:
        participants: the names whose public keys were published for the round.
        length: the vector length.
        min_survivors: fewer masked vectors than this and the round fails (a sum of one is that client's input).
    """

    def __init__(self, participants: Iterable[str], length: int, *, min_survivors: int = 2) -> None:
        self.participants = sorted(set(participants))
        self.length = length
        self.min_survivors = max(2, min_survivors)
        self._total = np.zeros(length, dtype=np.uint64)
        self._received: set[str] = set()

    def add(self, name: str, masked: np.ndarray) -> None:
        """Add one client's masked vector (checked for sender, shape and dtype)."""
        if name not in self.participants:
            raise SecAggError(f"{name} sent a masked vector but is not a participant of this round")
        if name in self._received:
            raise SecAggError(f"{name} sent two masked vectors in one round")
        arr = np.asarray(masked)
        if arr.dtype != np.uint64 or arr.shape != (self.length,):
            raise SecAggError(f"masked vector of {name} is {arr.dtype}{list(arr.shape)}; expected "
                              f"uint64[{self.length}]")
        with np.errstate(over="ignore"):
            self._total = self._total + arr
        self._received.add(name)

    @property
    def survivors(self) -> list[str]:
        return sorted(self._received)

    @property
    def dropped(self) -> list[str]:
        return [p for p in self.participants if p not in self._received]

    def unmask(self, reveals: Mapping[str, Mapping[str, bytes]], *, frac_bits: int = FRAC_BITS) -> np.ndarray:
        """The decoded sum of the survivors' inputs; ``reveals``: survivor -> {dropped peer: seed}."""
        if len(self._received) < self.min_survivors:
            raise SecAggError(f"only {len(self._received)} of {len(self.participants)} clients sent masked "
                              f"vectors; at least {self.min_survivors} are needed to hide each one")
        total = self._total.copy()
        dropped = self.dropped
        with np.errstate(over="ignore"):
            for survivor in self.survivors if dropped else ():
                seeds = reveals.get(survivor, {})
                missing = [d for d in dropped if d not in seeds]
                if missing:
                    raise SecAggError(f"{survivor} did not reveal its seeds with dropped {missing}; the sum "
                                      "cannot be unmasked", hint="the round fails; run it again")
                for peer in dropped:
                    m = expand(seeds[peer], self.length)
                    total = total - m if _sign(survivor, peer) > 0 else total + m
        return decode(total, frac_bits=frac_bits)
