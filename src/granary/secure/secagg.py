"""Secure aggregation (Bonawitz et al., CCS 2017): the aggregator learns the sum of the clients' vectors and nothing
else, and the sum survives clients dropping out after they masked.

A round, for the clients U1 that advertised keys and a threshold t (more than half of U1):

1. **keys**: each client makes two X25519 key pairs, *c* (to encrypt shares to a peer) and *s* (to agree pairwise
   masks), draws a 32-byte self-mask seed *b*, and publishes both public keys and SHA-256(b).
2. **shares**: each client t-of-|U1| Shamir-shares its *s* private key and *b* (:mod:`granary.secure.shamir`; holder
   i is the i-th name of U1 in sorted order) and sends each peer its two shares AES-GCM-encrypted under a key agreed
   with *c*, through the aggregator, which cannot read them. U2: the clients whose shares arrived.
3. **masked input**: y_u = x_u + PRG(b_u) + sum over v in U2, v != u of +-PRG(s_uv) modulo 2**64 (inputs in
   fixed point; + when u < v). U3: the clients whose y arrived.
4. **unmasking**: each survivor answers with its share of b_u for every u in U3 and of s_u for every u in
   U2 \\ U3, and never both kinds for one client (it refuses). From t answers the aggregator recovers each b_u of
   U3 (checked against its hash) and removes PRG(b_u), recovers each dropped client's *s* key (checked against its
   public key) and removes that client's pairwise masks with U3. Masks between survivors cancel in the sum.
   Fewer than t answers, or fewer than t in U3: the round fails with that reason.

One survivor's y_u stays hidden: its self-mask is removed only inside the sum, and its pairwise masks need a
survivor's *s* key, whose shares honest clients never reveal. Threat model (honest-but-curious aggregator, fewer
than t colluding clients): docs/privacy.md.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from granary.secure import shamir
from granary.secure.errors import SecAggError

FRAC_BITS = 24  # fixed-point resolution 2**-24 (about 6e-8)
KEYS_BYTES = 96  # what a client advertises: c public key, s public key, SHA-256 of its self-mask seed
MASK_INFO = b"granary-secagg-v2-mask"
_SHARE_INFO = b"granary-secagg-v2-share"


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
        raise SecAggError(f"a mask seed is 32 bytes, got {len(seed)}")
    enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    return np.frombuffer(enc.update(bytes(8 * length)) + enc.finalize(), dtype=np.uint64).copy()


def default_threshold(num_clients: int) -> int:
    """More than half of the round's clients (at least 2)."""
    return max(2, num_clients // 2 + 1)


def check_threshold(threshold: int, num_clients: int) -> None:
    """A threshold must exceed half the clients (so two disjoint groups cannot both unmask) and not exceed them."""
    if not (num_clients // 2 < threshold <= num_clients and threshold >= 2):
        raise SecAggError(f"threshold {threshold} does not fit {num_clients} clients: it must be more than half "
                          f"of them, at least 2 and at most {num_clients}")


def holders(names: Iterable[str]) -> dict[str, int]:
    """Each client's Shamir holder index (1-based, sorted names)."""
    return {n: i + 1 for i, n in enumerate(sorted(set(names)))}


def agree(private: X25519PrivateKey, peer_public: bytes, *, info: bytes, round_id: str, a: str, b: str) -> bytes:
    """The 32-byte key the pair (a, b) agrees on for ``info`` in this round (X25519, then HKDF-SHA256)."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise SecAggError(f"a public key of the pair ({a}, {b}) is malformed: {exc}") from None
    lo, hi = sorted((a, b))
    salt = hashlib.sha256(f"{round_id}\0{lo}\0{hi}".encode()).digest()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(shared)


def check_keys(keys: Mapping[str, bytes]) -> dict[str, bytes]:
    """The advertised keys, each checked to be :data:`KEYS_BYTES` long."""
    bad = sorted(n for n, k in keys.items() if not isinstance(k, bytes) or len(k) != KEYS_BYTES)
    if bad:
        raise SecAggError(f"advertised keys of {bad} are not {KEYS_BYTES} bytes")
    return dict(keys)


def pair_mask(seed: bytes, me: str, peer: str, length: int) -> np.ndarray:
    """The mask ``me`` adds for the pair (me, peer): +PRG(seed) when me < peer, else -PRG(seed)."""
    m = expand(seed, length)
    return m if me < peer else (np.uint64(0) - m)


class SecAggClient:
    """One client's side of a round (steps 1-4 of the module docstring).

    Args:
        name: this client's unique name in the round.
        round_id: binds keys, seeds and share ciphertexts to this round.
        randbytes: the randomness source (tests pass a seeded one; the default is ``os.urandom``).
    """

    def __init__(self, name: str, round_id: str, *, randbytes: Callable[[int], bytes] = os.urandom) -> None:
        self.name = name
        self.round_id = round_id
        self._c = X25519PrivateKey.from_private_bytes(randbytes(32))
        self._s = X25519PrivateKey.from_private_bytes(randbytes(32))
        self._b = randbytes(32)
        self._nonce = randbytes
        self._keys: dict[str, bytes] = {}
        self._threshold = 0
        self._held: dict[str, tuple[bytes, bytes]] = {}  # client -> (share of its s key, share of its b)
        self._u2: list[str] | None = None
        self._revealed: dict[str, str] = {}  # client -> "b" or "s": the kind of share already given out

    def public_keys(self) -> bytes:
        """The 96 bytes to advertise: c public key, s public key, SHA-256 of the self-mask seed."""
        return (self._c.public_key().public_bytes_raw() + self._s.public_key().public_bytes_raw()
                + hashlib.sha256(self._b).digest())

    def share_keys(self, peers: Mapping[str, bytes], *, threshold: int) -> dict[str, bytes]:
        """Encrypted shares for every other client of ``peers`` (U1: name -> advertised keys, this one included)."""
        if self.name not in peers:
            raise SecAggError(f"{self.name} is not among the round's participants {sorted(peers)}")
        check_threshold(threshold, len(peers))
        self._keys, self._threshold = check_keys(peers), threshold
        index = holders(peers)
        s_shares = shamir.split(self._s.private_bytes_raw(), threshold=threshold, holders=len(index))
        b_shares = shamir.split(self._b, threshold=threshold, holders=len(index))
        self._held = {self.name: (s_shares[index[self.name]], b_shares[index[self.name]])}
        return {peer: self._seal(peer, s_shares[i] + b_shares[i]) for peer, i in index.items() if peer != self.name}

    def _share_key(self, peer: str) -> bytes:
        return agree(self._c, self._keys[peer][:32], info=_SHARE_INFO, round_id=self.round_id, a=self.name, b=peer)

    def _seal(self, peer: str, plaintext: bytes) -> bytes:
        nonce = self._nonce(12)
        aad = f"{self.round_id}\0{self.name}\0{peer}".encode()
        return nonce + AESGCM(self._share_key(peer)).encrypt(nonce, plaintext, aad)

    def _open(self, sender: str, blob: bytes) -> tuple[bytes, bytes]:
        aad = f"{self.round_id}\0{sender}\0{self.name}".encode()
        try:
            plain = AESGCM(self._share_key(sender)).decrypt(blob[:12], blob[12:], aad)
        except (InvalidTag, ValueError):
            raise SecAggError(f"the shares {sender} sent to {self.name} fail authentication (altered, or meant "
                              "for another client or round)") from None
        half = len(plain) // 2
        return plain[:half], plain[half:]

    def mask(self, values: np.ndarray, shares: Mapping[str, bytes], *, frac_bits: int = FRAC_BITS) -> np.ndarray:
        """The masked, encoded vector to send; ``shares``: sender -> ciphertext for this client, from U2."""
        if not self._keys:
            raise SecAggError(f"{self.name} masks before sharing its keys")
        unknown = sorted(set(shares) - set(self._keys) | ({self.name} & set(shares)))
        if unknown:
            raise SecAggError(f"shares from {unknown}, which are not other participants of this round")
        for sender, blob in shares.items():
            self._held[sender] = self._open(sender, bytes(blob))
        u2 = sorted(set(shares) | {self.name})
        if len(u2) < self._threshold:
            raise SecAggError(f"only {len(u2)} clients shared their keys; the threshold is {self._threshold}")
        self._u2 = u2
        out = encode(values, num_clients=len(u2), frac_bits=frac_bits)
        with np.errstate(over="ignore"):
            out = out + expand(self._b, out.size)
            for peer in u2:
                if peer != self.name:
                    seed = agree(self._s, self._keys[peer][32:64], info=MASK_INFO, round_id=self.round_id,
                                  a=self.name, b=peer)
                    out = out + pair_mask(seed, self.name, peer, out.size)
        return out

    def unmask(self, survivors: Iterable[str], dropped: Iterable[str]) -> dict[str, tuple[str, bytes]]:
        """Shares for the aggregator: of b for each survivor, of the s key for each dropped client (never both)."""
        alive, gone = set(survivors), set(dropped)
        if self._u2 is None:
            raise SecAggError(f"{self.name} sent no masked input this round; nothing to unmask")
        if self.name not in alive:
            raise SecAggError(f"{self.name} was declared dropped but is answering; refusing to reveal")
        if alive & gone or (alive | gone) - set(self._u2):
            raise SecAggError(f"survivors {sorted(alive)} and dropped {sorted(gone)} must split the clients that "
                              f"shared keys {self._u2}; refusing to reveal")
        if len(alive) < self._threshold:
            raise SecAggError(f"{len(alive)} survivors are fewer than the threshold {self._threshold}; refusing")
        twice = sorted(u for u in alive if self._revealed.get(u) == "s") + \
            sorted(u for u in gone if self._revealed.get(u) == "b")
        if twice:
            raise SecAggError(f"both kinds of shares of {twice} were asked for; that would unmask their input alone")
        self._revealed.update({u: "b" for u in alive} | {u: "s" for u in gone})
        return {u: ("b", self._held[u][1]) for u in sorted(alive)} | {u: ("s", self._held[u][0]) for u in sorted(gone)}
