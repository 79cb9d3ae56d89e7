"""Chunked AES-GCM: round trips, random access, and detection of every kind of tampering."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.secure.crypto import (
    HEADER_BYTES,
    TAG_BYTES,
    ChunkLayout,
    DecryptingReader,
    decrypt_bytes,
    encrypt_bytes,
    encrypt_stream,
    new_header,
)
from granary.secure.errors import CryptoError

DEK = bytes(range(32))
LAYOUTS = [ChunkLayout(chunk_bytes=64), ChunkLayout(chunk_bytes=48, head_bytes=64)]


def _enc(data: bytes, layout: ChunkLayout, context: bytes = b"web", shard_id: bytes | None = None) -> bytes:
    header = new_header(len(data), layout=layout, shard_id=shard_id)
    return bytes(encrypt_bytes(data, dek=DEK, header=header, context=context))


@given(data=st.binary(max_size=700), which=st.sampled_from(LAYOUTS), start=st.integers(0, 700),
       length=st.integers(0, 300))
@settings(max_examples=120, deadline=None)
def test_round_trip_and_random_access(data: bytes, which: ChunkLayout, start: int, length: int) -> None:
    blob = _enc(data, which)
    assert len(blob) == HEADER_BYTES + len(data) + which.num_chunks(len(data)) * TAG_BYTES
    assert bytes(decrypt_bytes(blob, dek=DEK, context=b"web", where="t")) == data
    reader = DecryptingReader(io.BytesIO(blob), dek=DEK, context=b"web", where="t")
    reader.seek(start)
    assert reader.read(length) == data[start:start + length]
    reader.seek(0)
    assert reader.read() == data


def test_stream_encryption_matches_buffer_encryption(tmp_path: os.PathLike[str]) -> None:
    data = os.urandom(10_000)
    header = new_header(len(data), layout=ChunkLayout(chunk_bytes=1000, head_bytes=64))
    out = io.BytesIO()
    written = encrypt_stream(io.BytesIO(data), out, dek=DEK, header=header, context=b"web")
    assert written == len(out.getvalue()) == header.cipher_bytes
    assert out.getvalue() == bytes(encrypt_bytes(data, dek=DEK, header=header, context=b"web"))


def test_token_blocks_decrypt_alone() -> None:
    layout = ChunkLayout(chunk_bytes=100, head_bytes=64)
    data = os.urandom(64 + 100 * 5 + 37)
    blob = bytearray(_enc(data, layout))
    # corrupt block 1 (chunk 2): block 3 still decrypts, block 1 does not
    blob[layout.cipher_offset(2) + 5] ^= 1
    reader = DecryptingReader(io.BytesIO(bytes(blob)), dek=DEK, context=b"web", where="t")
    assert bytes(reader.chunk(4)) == data[64 + 300:64 + 400]
    with pytest.raises(CryptoError) as err:
        reader.chunk(2)
    assert err.value.chunk == 2


@given(data=st.binary(min_size=1, max_size=400), pos=st.integers(0, 10_000), bit=st.integers(0, 7))
@settings(max_examples=150, deadline=None)
def test_any_bit_flip_is_detected(data: bytes, pos: int, bit: int) -> None:
    blob = bytearray(_enc(data, LAYOUTS[0]))
    blob[pos % len(blob)] ^= 1 << bit
    with pytest.raises(CryptoError):
        decrypt_bytes(blob, dek=DEK, context=b"web", where="t")


@given(data=st.binary(min_size=0, max_size=400), cut=st.integers(1, 10_000))
@settings(max_examples=100, deadline=None)
def test_truncation_and_extension_are_detected(data: bytes, cut: int) -> None:
    blob = _enc(data, LAYOUTS[0])
    truncated = blob[:len(blob) - 1 - cut % len(blob)]
    with pytest.raises(CryptoError):
        decrypt_bytes(truncated, dek=DEK, context=b"web", where="t")
    with pytest.raises(CryptoError):
        DecryptingReader(io.BytesIO(blob + b"\0" * (cut % 64 + 1)), dek=DEK, context=b"web", where="t")


@given(data=st.binary(min_size=200, max_size=600), i=st.integers(0, 100), j=st.integers(0, 100))
@settings(max_examples=100, deadline=None)
def test_reordered_chunks_are_detected(data: bytes, i: int, j: int) -> None:
    layout = ChunkLayout(chunk_bytes=64)
    blob = bytearray(_enc(data, layout))
    n = layout.num_chunks(len(data)) - 1  # full chunks only (the last may be shorter)
    i, j = i % n, j % n
    if i == j:
        j = (i + 1) % n
    a, b = layout.cipher_offset(i), layout.cipher_offset(j)
    size = 64 + TAG_BYTES
    blob[a:a + size], blob[b:b + size] = blob[b:b + size], blob[a:a + size]
    with pytest.raises(CryptoError):
        decrypt_bytes(blob, dek=DEK, context=b"web", where="t")


def test_dropping_the_last_chunk_is_detected_even_with_a_fixed_header() -> None:
    layout = ChunkLayout(chunk_bytes=64)
    data = os.urandom(64 * 4)
    blob = _enc(data, layout)
    forged_header = new_header(64 * 3, layout=layout)  # attacker rewrites the length: AAD changes
    forged = forged_header.pack()[:HEADER_BYTES - 0]
    body = blob[HEADER_BYTES:layout.cipher_offset(3)]
    with pytest.raises(CryptoError):
        decrypt_bytes(forged + body, dek=DEK, context=b"web", where="t")


def test_wrong_key_wrong_context_and_swapped_object() -> None:
    data = os.urandom(500)
    sid = os.urandom(16)
    blob = _enc(data, LAYOUTS[0], shard_id=sid)
    with pytest.raises(CryptoError, match="failed authentication"):
        decrypt_bytes(blob, dek=os.urandom(32), context=b"web", where="t")
    with pytest.raises(CryptoError, match="failed authentication"):
        decrypt_bytes(blob, dek=DEK, context=b"other-dataset", where="t")
    other = _enc(data, LAYOUTS[0])
    with pytest.raises(CryptoError, match="swapped"):
        decrypt_bytes(other, dek=DEK, context=b"web", where="t", expected_shard_id=sid)


def test_garbage_is_refused_clearly() -> None:
    with pytest.raises(CryptoError, match="not a Granary encrypted object"):
        decrypt_bytes(b"x" * 100, dek=DEK, context=b"web", where="shard-7")
    with pytest.raises(CryptoError, match="truncated inside its header"):
        decrypt_bytes(b"GRNENC01", dek=DEK, context=b"web", where="shard-7")


def test_nonces_never_repeat_across_objects_or_chunks() -> None:
    headers = [new_header(10, layout=LAYOUTS[0]) for _ in range(200)]
    assert len({h.shard_id for h in headers}) == 200
    # within an object, the nonce is prefix || chunk index: distinct per chunk by construction
    h = headers[0]
    nonces = {h.nonce_prefix + i.to_bytes(8, "little") for i in range(1000)}
    assert len(nonces) == 1000


def test_layout_validation() -> None:
    with pytest.raises(ValueError):
        ChunkLayout(chunk_bytes=8)
    with pytest.raises(ValueError):
        ChunkLayout(chunk_bytes=1 << 30)
