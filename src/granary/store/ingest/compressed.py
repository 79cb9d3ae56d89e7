"""Streaming reads of plain, .gz and .zst inputs that know how far they got and notice a truncated or corrupt file.

``zstandard``'s stream reader and ``read_to_iter`` stop silently when a file ends inside a frame, so a cut
download looked like a shorter file. :class:`InputStream` feeds the compressed bytes to a decompression object
itself, 64 KiB at a time (bounded memory, as fast as the stream reader), and at the end of the raw file checks
that the last frame or gzip member was complete; concatenated frames and members are read in turn.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Literal

import zstandard

from granary.errors import StoreError

RAW_CHUNK_BYTES = 64 * 1024
Codec = Literal["plain", "gzip", "zstd"]


class DamagedInputError(StoreError):
    """A compressed input ends early (``truncated``) or holds bytes that do not decompress (``corrupt``).

    Attributes:
        path: the file.
        kind: ``truncated`` or ``corrupt``.
        raw_offset: for ``corrupt``, where the 64 KiB chunk that failed starts; for ``truncated``, the size.
        raw_size: the file's size in bytes.
        out_offset: decompressed bytes produced before it.
        detail: the decompressor's own message.
    """

    def __init__(self, path: Path, kind: Literal["truncated", "corrupt"], *, raw_offset: int, raw_size: int,
                 out_offset: int, detail: str) -> None:
        self.path = path
        self.kind = kind
        self.raw_offset = raw_offset
        self.raw_size = raw_size
        self.out_offset = out_offset
        self.detail = detail
        if kind == "truncated":
            unit = "gzip member" if codec_of(path) == "gzip" else "zstd frame"
            what = (f"{path} is truncated: its compressed data ends inside a {unit} after all {raw_size:,} bytes "
                    f"were read ({out_offset:,} bytes decompressed)")
        else:
            what = (f"{path} is corrupt in the compressed bytes from {raw_offset:,} (of {raw_size:,}; "
                    f"{out_offset:,} bytes decompressed before them): {detail}")
        super().__init__(what, hint="download or copy the file again (check it with `zstd -t` / `gzip -t`)")


def codec_of(path: Path) -> Codec:
    """The compression of ``path``, from its suffix."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith((".zst", ".zstd")):
        return "zstd"
    return "plain"


class InputStream:
    """``readinto`` over the decompressed bytes of a file, with the raw and decompressed offsets.

    Raises :class:`DamagedInputError` from ``readinto`` once every byte that could be decompressed has been
    returned. Use as a context manager.

    Attributes:
        raw_offset: compressed bytes consumed so far.
        out_offset: decompressed bytes returned so far.
        raw_size: the file's size.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.codec = codec_of(path)
        self._raw = open(path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        self.raw_size = path.stat().st_size
        self.raw_offset = 0
        self.out_offset = 0
        self._pending = memoryview(b"")
        self._dec: Any = None
        self._fed = False  # whether the current frame/member has been given any byte
        self._eof = False
        self._error: DamagedInputError | None = None

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with decompressed bytes (all of it unless the input ends); 0 at the end of the input.

        Filling it whole matters: the JSONL reader parses what one call returns, and pyarrow is fastest on
        large blocks.
        """
        if self.codec == "plain":
            n = self._raw.readinto(view)
            self.raw_offset += n
            self.out_offset += n
            return n
        done = 0
        while done < len(view):
            if not self._pending:
                if self._eof:
                    break
                self._pending = memoryview(self._step())
                continue
            n = min(len(view) - done, len(self._pending))
            view[done:done + n] = self._pending[:n]
            self._pending = self._pending[n:]
            done += n
            self.out_offset += n
        if done == 0 and self._error is not None:
            raise self._error
        return done

    def _step(self) -> bytes:
        """Decompress the next raw chunk (or finish at the end of the file)."""
        data = self._raw.read(RAW_CHUNK_BYTES)
        if not data:
            self._eof = True
            if self._fed:
                self._error = self._damage("truncated", "end of file inside a frame")
            return b""
        start = self.raw_offset
        self.raw_offset += len(data)
        out: list[bytes] = []
        while data:
            if self._dec is None:
                if self.codec == "gzip":
                    data = data.lstrip(b"\0")  # gzip allows zero padding between and after members
                    if not data:
                        break
                self._dec = self._new_decompressor()
                self._fed = False
            try:
                out.append(self._dec.decompress(data))
            except (zlib.error, zstandard.ZstdError) as exc:
                self._eof = True
                self._error = self._damage("corrupt", str(exc), produced=sum(map(len, out)), at=start)
                break
            self._fed = True
            if not self._dec.eof:
                break
            data = self._dec.unused_data
            self._dec, self._fed = None, False
        return b"".join(out)

    def _new_decompressor(self) -> Any:
        if self.codec == "gzip":
            return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        return zstandard.ZstdDecompressor().decompressobj()

    def _damage(self, kind: Literal["truncated", "corrupt"], detail: str, *, produced: int = 0,
                at: int | None = None) -> DamagedInputError:
        return DamagedInputError(self.path, kind, raw_offset=self.raw_offset if at is None else at,
                                 raw_size=self.raw_size,
                                 out_offset=self.out_offset + len(self._pending) + produced, detail=detail)

    def close(self) -> None:
        """Close the file."""
        self._raw.close()

    def __enter__(self) -> InputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
