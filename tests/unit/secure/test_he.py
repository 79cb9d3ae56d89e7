"""CKKS encryption of updates and statistics: the encrypted sum decrypts to the plain sum; the public half cannot
decrypt; malformed input is refused."""

from __future__ import annotations

import numpy as np
import pytest

from granary.secure.errors import HomomorphicError

he = pytest.importorskip("granary.secure.he")
pytest.importorskip("tenseal")


@pytest.fixture(scope="module")
def contexts() -> tuple[object, object, bytes]:
    secret = he.new_context()
    return he.load_context(secret), he.load_context(he.public_context(secret)), secret


def test_encrypted_sum_equals_plain_sum(contexts: tuple[object, object, bytes]) -> None:
    sec, pub, _ = contexts
    rng = np.random.default_rng(0)
    vectors = [rng.normal(0, 0.1, 9000) for _ in range(4)]  # three ciphertexts each (4096 slots)
    total = he.add(pub, [he.encrypt(sec, v) for v in vectors])
    out = he.decrypt(sec, total, 9000)
    assert out.shape == (9000,)
    assert np.max(np.abs(out - np.sum(vectors, axis=0))) < 1e-5


def test_public_context_cannot_decrypt_and_bad_input_is_refused(contexts: tuple[object, object, bytes]) -> None:
    sec, pub, _ = contexts
    blob = he.encrypt(sec, np.ones(10))
    with pytest.raises(HomomorphicError, match="no secret key"):
        he.decrypt(pub, blob, 10)
    with pytest.raises(HomomorphicError, match=r"truncated|malformed"):
        he.add(pub, [blob[:20]])
    with pytest.raises(HomomorphicError, match="different lengths"):
        he.add(pub, [blob, he.encrypt(sec, np.ones(5000))])
    with pytest.raises(HomomorphicError, match="NaN"):
        he.encrypt(sec, np.array([np.inf]))
    with pytest.raises(HomomorphicError, match="not a valid CKKS context"):
        he.load_context(b"garbage")
    with pytest.raises(HomomorphicError, match="holds 10 values, 5000 were expected"):
        he.decrypt(sec, blob, 5000)


def test_statistics_across_sites(contexts: tuple[object, object, bytes]) -> None:
    sec, pub, _ = contexts
    keys = ["docs", "tokens", "lang:en", "lang:fr"]
    sites = [{"docs": 120, "tokens": 51234, "lang:en": 100, "lang:fr": 20},
             {"docs": 80, "tokens": 20000, "lang:en": 80}]
    total = he.add(pub, [he.encrypt_stats(sec, s, keys) for s in sites])
    out = he.decrypt_stats(sec, total, keys)
    assert {k: round(v) for k, v in out.items()} == {"docs": 200, "tokens": 71234, "lang:en": 180, "lang:fr": 20}
    with pytest.raises(HomomorphicError, match="not among the agreed keys"):
        he.encrypt_stats(sec, {"secret": 1.0}, keys)
