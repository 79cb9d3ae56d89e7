"""Chunked AES-256-GCM encryption of objects: header, chunk layout, nonces, AAD and a seekable decrypting reader.

The on-disk layout is specified in ``granary/secure/README.md``. Every object gets a fresh 256-bit data key,
so a (key, nonce) pair can never repeat: the nonce is a random 4-byte prefix followed by the 64-bit chunk index.
Each chunk's associated data binds the whole header (format, layout, length, shard id), the context (dataset
name), the chunk index and a last-chunk flag, so edits, truncation, reordering, splicing and swapping all fail.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from granary.secure.errors import CryptoError

Buffer = bytes | bytearray | memoryview

MAGIC = b"GRNENC01"
FORMAT_VERSION = 1
HEADER_BYTES = 64
TAG_BYTES = 16
KEY_BYTES = 32
DEFAULT_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 64 << 20
_HEADER = struct.Struct("<8sHHIIQ4s16s")  # 48 bytes, zero-padded to HEADER_BYTES
_AAD_TAIL = struct.Struct("<QB")


@dataclass(kw_only=True, frozen=True)
class ChunkLayout:
    """How plaintext is cut into chunks: an optional first chunk of ``head_bytes``, then ``chunk_bytes`` each.

    A token shard uses ``head_bytes=64`` (its header) and ``chunk_bytes`` = one token block, so each token
    block is exactly one chunk and decrypts alone.
    """

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    head_bytes: int = 0

    def __post_init__(self) -> None:
        if not 16 <= self.chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in [16, {MAX_CHUNK_BYTES}], got {self.chunk_bytes}")
        if not 0 <= self.head_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"head_bytes must be in [0, {MAX_CHUNK_BYTES}], got {self.head_bytes}")

    def num_chunks(self, plain_bytes: int) -> int:
        """Number of chunks for ``plain_bytes`` of plaintext (an empty object still has one empty chunk)."""
        if self.head_bytes and plain_bytes > self.head_bytes:
            return 1 + -(-(plain_bytes - self.head_bytes) // self.chunk_bytes)
        if self.head_bytes:
            return 1
        return max(1, -(-plain_bytes // self.chunk_bytes))

    def chunk_start(self, index: int) -> int:
        """Plaintext offset where chunk ``index`` starts."""
        if self.head_bytes:
            return 0 if index == 0 else self.head_bytes + (index - 1) * self.chunk_bytes
        return index * self.chunk_bytes

    def chunk_of(self, offset: int) -> int:
        """Index of the chunk holding plaintext byte ``offset``."""
        if self.head_bytes:
            return 0 if offset < self.head_bytes else 1 + (offset - self.head_bytes) // self.chunk_bytes
        return offset // self.chunk_bytes

    def span(self, index: int, plain_bytes: int) -> tuple[int, int]:
        """(plaintext offset, plaintext length) of chunk ``index``."""
        start = self.chunk_start(index)
        size = self.head_bytes if (self.head_bytes and index == 0) else self.chunk_bytes
        return start, max(0, min(size, plain_bytes - start))

    def cipher_offset(self, index: int) -> int:
        """Byte offset of chunk ``index`` in the encrypted object."""
        return HEADER_BYTES + self.chunk_start(index) + index * TAG_BYTES


@dataclass(kw_only=True, frozen=True)
class EnvelopeHeader:
    """The 64-byte header of an encrypted object."""

    layout: ChunkLayout
    plain_bytes: int
    nonce_prefix: bytes
    shard_id: bytes

    def pack(self) -> bytes:
        """Serialize to exactly HEADER_BYTES bytes."""
        raw = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, self.layout.head_bytes, self.layout.chunk_bytes,
                           self.plain_bytes, self.nonce_prefix, self.shard_id)
        return raw.ljust(HEADER_BYTES, b"\0")

    @classmethod
    def unpack(cls, raw: bytes, *, where: str) -> EnvelopeHeader:
        """Parse a header, raising CryptoError naming ``where`` when it is not one."""
        if len(raw) < HEADER_BYTES:
            raise CryptoError(f"{where}: encrypted object truncated inside its header ({len(raw)} bytes)",
                              where=where)
        magic, version, _flags, head, chunk, plain, prefix, shard_id = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise CryptoError(f"{where}: not a Granary encrypted object (magic {magic!r})", where=where)
        if _flags != 0 or any(raw[_HEADER.size:HEADER_BYTES]):
            raise CryptoError(f"{where}: corrupt encryption header (reserved bytes set)", where=where)
        if version != FORMAT_VERSION:
            raise CryptoError(f"{where}: unsupported encryption format version {version}", where=where,
                              hint="upgrade Granary to read this object")
        try:
            layout = ChunkLayout(chunk_bytes=chunk, head_bytes=head)
        except ValueError as exc:
            raise CryptoError(f"{where}: corrupt encryption header ({exc})", where=where) from None
        return cls(layout=layout, plain_bytes=plain, nonce_prefix=prefix, shard_id=shard_id)

    @property
    def cipher_bytes(self) -> int:
        """Total size of the encrypted object."""
        n = self.layout.num_chunks(self.plain_bytes)
        return HEADER_BYTES + self.plain_bytes + n * TAG_BYTES


class ChunkCipher:
    """Encrypts and decrypts single chunks of one object with its data key.

    Args:
        dek: the 32-byte data key.
        header: the object's header (its packed bytes are part of every chunk's AAD).
        context: extra bytes bound into the AAD (the dataset name).
        where: a name for error messages.
    """

    def __init__(self, dek: bytes, header: EnvelopeHeader, *, context: bytes, where: str) -> None:
        if len(dek) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes, got {len(dek)}")
        self.header = header
        self.where = where
        self.num_chunks = header.layout.num_chunks(header.plain_bytes)
        self._aead = AESGCM(dek)
        self._aad_head = header.pack() + struct.pack("<I", len(context)) + context

    def _nonce_aad(self, index: int) -> tuple[bytes, bytes]:
        last = 1 if index == self.num_chunks - 1 else 0
        return (self.header.nonce_prefix + index.to_bytes(8, "little"),
                self._aad_head + _AAD_TAIL.pack(index, last))

    def encrypt_into(self, index: int, plain: Buffer, out: memoryview) -> None:
        """Encrypt chunk ``index``; ``out`` must be exactly len(plain) + TAG_BYTES."""
        nonce, aad = self._nonce_aad(index)
        self._aead.encrypt_into(nonce, plain, aad, out)

    def decrypt_into(self, index: int, cipher: Buffer, out: memoryview) -> None:
        """Decrypt and authenticate chunk ``index``; ``out`` must be exactly len(cipher) - TAG_BYTES."""
        nonce, aad = self._nonce_aad(index)
        try:
            self._aead.decrypt_into(nonce, cipher, aad, out)
        except InvalidTag:
            raise CryptoError(
                f"{self.where}: chunk {index} of {self.num_chunks} failed authentication "
                "(tampered, truncated, reordered, swapped or wrong key)", where=self.where, chunk=index,
            ) from None


def new_header(plain_bytes: int, *, layout: ChunkLayout, shard_id: bytes | None = None) -> EnvelopeHeader:
    """A header with a fresh random nonce prefix (and shard id unless given)."""
    return EnvelopeHeader(layout=layout, plain_bytes=plain_bytes, nonce_prefix=os.urandom(4),
                          shard_id=shard_id or os.urandom(16))


def encrypt_bytes(data: Buffer, *, dek: bytes, header: EnvelopeHeader, context: bytes,
                  out: bytearray | None = None) -> bytearray:
    """Encrypt a whole buffer; ``out`` (reused when given and large enough) receives the object."""
    view = memoryview(data).cast("B")
    if len(view) != header.plain_bytes:
        raise ValueError(f"header says {header.plain_bytes} plaintext bytes, buffer has {len(view)}")
    total = header.cipher_bytes
    if out is None or len(out) != total:
        out = bytearray(total)
    dst = memoryview(out)
    dst[:HEADER_BYTES] = header.pack()
    cipher = ChunkCipher(dek, header, context=context, where="buffer")
    layout = header.layout
    for i in range(cipher.num_chunks):
        start, size = layout.span(i, header.plain_bytes)
        pos = layout.cipher_offset(i)
        cipher.encrypt_into(i, view[start:start + size], dst[pos:pos + size + TAG_BYTES])
    return out


def decrypt_bytes(data: Buffer, *, dek: bytes, context: bytes, where: str,
                  expected_shard_id: bytes | None = None, out: bytearray | None = None) -> bytearray:
    """Decrypt and authenticate a whole encrypted object held in memory."""
    src = memoryview(data).cast("B")
    header = read_header_bytes(bytes(src[:HEADER_BYTES]), where=where, expected_shard_id=expected_shard_id)
    if len(src) != header.cipher_bytes:
        raise CryptoError(f"{where}: encrypted object is {len(src)} bytes, its header says "
                          f"{header.cipher_bytes} (truncated or extended)", where=where)
    if out is None or len(out) != header.plain_bytes:
        out = bytearray(header.plain_bytes)
    dst = memoryview(out)
    cipher = ChunkCipher(dek, header, context=context, where=where)
    layout = header.layout
    for i in range(cipher.num_chunks):
        start, size = layout.span(i, header.plain_bytes)
        pos = layout.cipher_offset(i)
        cipher.decrypt_into(i, src[pos:pos + size + TAG_BYTES], dst[start:start + size])
    return out


def read_header_bytes(raw: bytes, *, where: str, expected_shard_id: bytes | None = None) -> EnvelopeHeader:
    """Parse a header and check it belongs to the expected object (detects swapped objects)."""
    header = EnvelopeHeader.unpack(raw, where=where)
    if expected_shard_id is not None and header.shard_id != expected_shard_id:
        raise CryptoError(
            f"{where}: holds encrypted object {header.shard_id.hex()} but the manifest expects "
            f"{expected_shard_id.hex()} (swapped object)", where=where,
        )
    return header


def encrypt_stream(src: BinaryIO, dst: BinaryIO, *, dek: bytes, header: EnvelopeHeader, context: bytes) -> int:
    """Encrypt ``header.plain_bytes`` bytes from ``src`` into ``dst`` chunk by chunk; returns bytes written."""
    dst.write(header.pack())
    cipher = ChunkCipher(dek, header, context=context, where="stream")
    layout = header.layout
    largest = max(layout.chunk_bytes, layout.head_bytes)
    plain = bytearray(largest)
    out = bytearray(largest + TAG_BYTES)
    written = HEADER_BYTES
    for i in range(cipher.num_chunks):
        _, size = layout.span(i, header.plain_bytes)
        got = src.readinto(memoryview(plain)[:size])  # type: ignore[attr-defined]
        if got != size:
            raise CryptoError(f"source ended after {layout.chunk_start(i) + (got or 0)} bytes, "
                              f"expected {header.plain_bytes}", where="stream", chunk=i)
        view = memoryview(out)[:size + TAG_BYTES]
        cipher.encrypt_into(i, memoryview(plain)[:size], view)
        dst.write(view)
        written += size + TAG_BYTES
    return written


class DecryptingReader(io.RawIOBase):
    """A seekable, read-only file over an encrypted object that decrypts only the chunks it touches.

    Args:
        raw: the encrypted object, opened seekable in binary mode (closed with this reader).
        dek: the object's data key.
        context: the AAD context it was encrypted with.
        where: a name for error messages.
        expected_shard_id: the shard id the manifest records (swapped objects are refused).
    """

    def __init__(self, raw: BinaryIO, *, dek: bytes, context: bytes, where: str,
                 expected_shard_id: bytes | None = None) -> None:
        super().__init__()
        self._raw = raw
        raw.seek(0)
        self.header = read_header_bytes(raw.read(HEADER_BYTES), where=where,
                                        expected_shard_id=expected_shard_id)
        actual = raw.seek(0, io.SEEK_END)
        if actual != self.header.cipher_bytes:
            raise CryptoError(f"{where}: encrypted object is {actual} bytes, its header says "
                              f"{self.header.cipher_bytes} (truncated or extended)", where=where)
        self._cipher = ChunkCipher(dek, self.header, context=context, where=where)
        self._where = where
        self._pos = 0
        self._cached_index = -1
        self._cached = bytearray()
        self._cbuf = bytearray()
        self._pread_lock = threading.Lock()
        self._mapped: memoryview | Literal[False] | None = None
        self._mmap: mmap.mmap | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.header.plain_bytes}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def size(self) -> int:
        """Plaintext size in bytes."""
        return self.header.plain_bytes

    def chunk(self, index: int) -> bytearray:
        """Decrypted plaintext of chunk ``index`` (authenticated; cached until the next chunk is read)."""
        if index == self._cached_index:
            return self._cached
        _, size = self.header.layout.span(index, self.header.plain_bytes)
        if len(self._cached) != size:
            self._cached = bytearray(size)
        self._cached_index = -1
        self._decrypt_chunk(index, size, memoryview(self._cached))
        self._cached_index = index
        return self._cached

    def _decrypt_chunk(self, index: int, size: int, out: memoryview) -> None:
        self._raw.seek(self.header.layout.cipher_offset(index))
        need = size + TAG_BYTES
        if len(self._cbuf) < need:
            self._cbuf = bytearray(need)
        view = memoryview(self._cbuf)[:need]
        got = self._raw.readinto(view)  # type: ignore[attr-defined]
        if got != need:
            raise CryptoError(f"{self._where}: encrypted object truncated in chunk {index}",
                              where=self._where, chunk=index)
        self._cipher.decrypt_into(index, view, out)

    def decrypt_chunk_into(self, index: int, out: memoryview) -> None:
        """Decrypt and authenticate chunk ``index``; its first ``len(out)`` plaintext bytes go to ``out`` (the
        whole chunk is always authenticated). Safe to call from several threads at once (no shared position).
        A local object is read through a read-only mapping of the already opened file, without a staging copy."""
        _, size = self.header.layout.span(index, self.header.plain_bytes)
        if len(out) > size:
            raise ValueError(f"chunk {index} has {size} plaintext bytes, fewer than the {len(out)} asked for")
        offset = self.header.layout.cipher_offset(index)
        mapped = self._mapping()
        if mapped is not None:
            cipher: Any = mapped[offset : offset + size + TAG_BYTES]
            if len(cipher) != size + TAG_BYTES:
                raise CryptoError(f"{self._where}: encrypted object truncated in chunk {index}",
                                  where=self._where, chunk=index)
        else:
            cipher = bytearray(size + TAG_BYTES)
            with self._pread_lock:
                self._raw.seek(offset)
                got = self._raw.readinto(cipher)  # type: ignore[attr-defined]
            if got != len(cipher):
                raise CryptoError(f"{self._where}: encrypted object truncated in chunk {index}",
                                  where=self._where, chunk=index)
        if len(out) == size:
            self._cipher.decrypt_into(index, cipher, out)
            return
        whole = bytearray(size)  # e.g. a token shard's last block, whose chunk also holds the footer
        self._cipher.decrypt_into(index, cipher, memoryview(whole))
        out[:] = whole[: len(out)]

    def _mapping(self) -> memoryview | None:
        """A read-only mapping of the underlying file when it is a local file (None otherwise)."""
        if self._mapped is None:
            with self._pread_lock:
                if self._mapped is None:
                    try:
                        fd = self._raw.fileno()
                        self._mmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                        self._mapped = memoryview(self._mmap)
                    except (OSError, ValueError, io.UnsupportedOperation, AttributeError):
                        self._mapped = False
        return self._mapped or None

    def readinto(self, buffer: Any) -> int:  # Any: typeshed's Buffer protocol needs Python 3.12
        dst = memoryview(buffer).cast("B")
        end = min(self.header.plain_bytes, self._pos + len(dst))
        done = 0
        layout = self.header.layout
        while self._pos < end:
            index = layout.chunk_of(self._pos)
            start, size = layout.span(index, self.header.plain_bytes)
            if self._pos == start and end - self._pos >= size and index != self._cached_index:
                self._decrypt_chunk(index, size, dst[done:done + size])  # whole chunk: no staging copy
                done += size
                self._pos += size
                continue
            data = self.chunk(index)
            lo = self._pos - start
            n = min(size - lo, end - self._pos)
            dst[done:done + n] = data[lo:lo + n]
            done += n
            self._pos += n
        return done

    def readall(self) -> bytes:
        out = bytearray(max(0, self.header.plain_bytes - self._pos))
        n = self.readinto(out)
        return bytes(out[:n])

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(BufferError):  # a chunk view still alive: the mapping goes with it
                if self._mapped:
                    self._mapped.release()
                if self._mmap is not None:
                    self._mmap.close()
            self._raw.close()
        super().close()
