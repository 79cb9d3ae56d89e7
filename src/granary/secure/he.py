"""CKKS homomorphic encryption of vectors (TenSEAL): sites encrypt, the aggregator adds without the key.

The sites of a federation share one secret CKKS context (created once with :func:`new_context` and handed to
each site out of band, like any shared key); the aggregator gets only the public form (:func:`public_context`),
which can add ciphertexts but cannot decrypt. A vector longer than one ciphertext's slot count is split over
several ciphertexts. The same path sums model updates and site statistics (counts, sums, histograms).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from granary.errors import MissingDependencyError
from granary.secure.errors import HomomorphicError

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 40, 40, 60)
SCALE_BITS = 40


def _ts() -> Any:
    try:
        import tenseal as ts
    except ImportError:
        raise MissingDependencyError("tenseal", "privacy") from None
    return ts


def new_context(*, poly_modulus_degree: int = POLY_MODULUS_DEGREE,
                coeff_mod_bit_sizes: Sequence[int] = COEFF_MOD_BIT_SIZES, scale_bits: int = SCALE_BITS) -> bytes:
    """A fresh secret CKKS context, serialized (keep it like a key: it decrypts)."""
    ts = _ts()
    if poly_modulus_degree < POLY_MODULUS_DEGREE:
        raise ValueError(f"poly_modulus_degree must be >= {POLY_MODULUS_DEGREE}, got {poly_modulus_degree}")
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_modulus_degree,
                     coeff_mod_bit_sizes=list(coeff_mod_bit_sizes))
    ctx.global_scale = 2.0**scale_bits
    return bytes(ctx.serialize(save_secret_key=True))


def public_context(secret: bytes) -> bytes:
    """The public form of a secret context: adds ciphertexts, cannot decrypt."""
    ctx = load_context(secret)
    ctx.make_context_public()
    return bytes(ctx.serialize())


def load_context(data: bytes) -> Any:
    """Deserialize a context (secret or public)."""
    ts = _ts()
    try:
        return ts.context_from(data)
    except Exception as exc:  # TenSEAL raises plain ValueError/RuntimeError from C++ on bad bytes
        raise HomomorphicError(f"not a valid CKKS context ({len(data)} bytes): {exc}",
                               hint="use the context file made by `granary fed keys`") from None


def _slots(ctx: Any) -> int:
    # TenSEAL does not expose the slot count; every degree new_context accepts (>= 8192) has at least this many
    return POLY_MODULUS_DEGREE // 2


def _pack(chunks: Iterable[bytes]) -> bytes:
    parts = list(chunks)
    head = struct.pack("<I", len(parts)) + b"".join(struct.pack("<Q", len(p)) for p in parts)
    return head + b"".join(parts)


def _unpack(blob: bytes) -> list[bytes]:
    try:
        (n,) = struct.unpack_from("<I", blob, 0)
        sizes = struct.unpack_from(f"<{n}Q", blob, 4)
    except struct.error:
        raise HomomorphicError(f"encrypted vector of {len(blob)} bytes is truncated") from None
    out, at = [], 4 + 8 * n
    for size in sizes:
        out.append(blob[at:at + size])
        at += size
    if at != len(blob) or any(len(p) == 0 for p in out):
        raise HomomorphicError(f"encrypted vector of {len(blob)} bytes is malformed (sizes {list(sizes)})")
    return out


def encrypt(ctx: Any, values: np.ndarray) -> bytes:
    """Encrypt a float vector into one blob (a header plus one ciphertext per slot-count chunk)."""
    ts = _ts()
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise HomomorphicError("the vector to encrypt holds NaN or infinite values")
    n = _slots(ctx)
    return _pack(bytes(ts.ckks_vector(ctx, x[i:i + n].tolist()).serialize()) for i in range(0, max(1, x.size), n))


def add(ctx: Any, blobs: Sequence[bytes]) -> bytes:
    """The ciphertext of the element-wise sum of encrypted vectors (needs only the public context)."""
    ts = _ts()
    if not blobs:
        raise HomomorphicError("nothing to add")
    parts = [_unpack(b) for b in blobs]
    if len({len(p) for p in parts}) != 1:
        raise HomomorphicError(f"encrypted vectors have different lengths: {sorted({len(p) for p in parts})} "
                               "ciphertexts")
    out = []
    for chunk in zip(*parts, strict=True):
        try:
            acc = ts.ckks_vector_from(ctx, chunk[0])
            for c in chunk[1:]:
                acc += ts.ckks_vector_from(ctx, c)
        except Exception as exc:  # a ciphertext from another context or garbage bytes
            raise HomomorphicError(f"a ciphertext cannot be read with this context: {exc}") from None
        out.append(bytes(acc.serialize()))
    return _pack(out)


def decrypt(ctx: Any, blob: bytes, length: int) -> np.ndarray:
    """Decrypt a blob into its first ``length`` values (needs the secret context)."""
    ts = _ts()
    if not ctx.has_secret_key():
        raise HomomorphicError("this CKKS context has no secret key and cannot decrypt",
                               hint="decrypt at a site holding the secret context")
    values: list[float] = []
    for c in _unpack(blob):
        values.extend(ts.ckks_vector_from(ctx, c).decrypt())
    if len(values) < length:
        raise HomomorphicError(f"the ciphertext holds {len(values)} values, {length} were expected")
    return np.asarray(values[:length], dtype=np.float64)


def encrypt_stats(ctx: Any, stats: Mapping[str, float], keys: Sequence[str]) -> bytes:
    """Encrypt a site's statistics (counts, sums, histogram bins) in the agreed key order ``keys``."""
    unknown = sorted(set(stats) - set(keys))
    if unknown:
        raise HomomorphicError(f"statistics {unknown} are not among the agreed keys {list(keys)}")
    return encrypt(ctx, np.array([float(stats.get(k, 0.0)) for k in keys]))


def decrypt_stats(ctx: Any, blob: bytes, keys: Sequence[str]) -> dict[str, float]:
    """Decrypt summed statistics back into ``{key: total}``."""
    return dict(zip(keys, decrypt(ctx, blob, len(keys)).tolist(), strict=True))
