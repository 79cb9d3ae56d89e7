from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.errors import IntegrityError
from granary.store.formats.tokens import TokenShardReader, TokenShardWriter

MIB = 1024 * 1024


def _write(path: Path, docs: list[np.ndarray], dtype: str = "uint16") -> dict[str, int]:
    with TokenShardWriter(path, dtype=dtype, block_bytes=MIB) as w:
        for d in docs:
            w.add(d)
        return w.close()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 65535), max_size=300), max_size=20), st.sampled_from(["uint16", "uint32"]))
def test_documents_read_back_identical(tmp_path_factory: pytest.TempPathFactory, docs: list[list[int]],
                                       dtype: str) -> None:
    path = tmp_path_factory.mktemp("tok") / "s.tok"
    arrays = [np.array(d, dtype=np.int64) for d in docs]
    facts = _write(path, arrays, dtype)
    r = TokenShardReader(path)
    assert (r.num_docs, r.num_tokens) == (len(docs), sum(map(len, docs))) == (facts["docs"], facts["tokens"])
    for i, d in enumerate(docs):
        assert r.document(i).tolist() == d
    assert r.verify() == []
    assert r.tokens.tolist() == [t for d in docs for t in d]


def test_blocks_are_fixed_size_and_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "s.tok"
    doc = np.arange(1_500_000) % 50_000
    _write(path, [doc])
    r = TokenShardReader(path)
    assert r.block_tokens == MIB // 2
    assert r.num_blocks == 3
    assert r.blocks["length"].tolist() == [MIB, MIB, (1_500_000 - 2 * (MIB // 2)) * 2]
    assert isinstance(r.tokens.base, np.memmap) or isinstance(r.tokens, np.memmap)
    assert int(r.tokens[1_234_567]) == 1_234_567 % 50_000


def test_corrupt_block_names_shard_and_block(tmp_path: Path) -> None:
    path = tmp_path / "s.tok"
    _write(path, [np.arange(1_200_000) % 1000])
    data = bytearray(path.read_bytes())
    data[64 + MIB + 10] ^= 0xFF  # inside block 1
    path.write_bytes(bytes(data))
    r = TokenShardReader(path, name="datasets/t/data/ab/abc.tok")
    r.verify_block(0)
    with pytest.raises(IntegrityError, match=r"datasets/t/data/ab/abc.tok block 1 failed its checksum"):
        r.verify_block(1)
    assert r.verify() == [1]


@pytest.mark.parametrize("cut", [1, 17, 100])
def test_truncated_shard_is_refused(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "s.tok"
    _write(path, [np.arange(1000)])
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(IntegrityError, match="damaged"):
        TokenShardReader(path)


def test_out_of_range_tokens_are_refused(tmp_path: Path) -> None:
    with TokenShardWriter(tmp_path / "s.tok", dtype="uint16") as w, pytest.raises(ValueError, match="token ids"):
        w.add(np.array([70_000]))


def test_data_is_written_in_aligned_chunks_for_huge_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write(2) but the last starts and ends at a multiple of the write chunk, so Linux caches the file in
    2 MiB folios (mapped with huge pages); the bytes are the same as an unbuffered writer's."""
    from granary.store.formats.tokens import writer as writer_mod

    writes: list[tuple[int, int]] = []
    real_open = open

    class Recorder:
        def __init__(self, f: object) -> None:
            self._f, self.pos = f, 0

        def write(self, data: memoryview) -> int:
            n = self._f.write(data)  # type: ignore[attr-defined]
            writes.append((self.pos, n))
            self.pos += n
            return n

        def __getattr__(self, name: str) -> object:
            return getattr(self._f, name)

    monkeypatch.setattr(writer_mod, "open", lambda *a, **k: Recorder(real_open(*a, **k)), raising=False)
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 65535, size=int(n)) for n in rng.integers(1, 400_000, size=40)]
    facts = _write(tmp_path / "s.tok", docs)
    chunk = writer_mod._WRITE_CHUNK
    assert len(writes) > 3 and sum(n for _, n in writes) == (tmp_path / "s.tok").stat().st_size
    assert all(pos % chunk == 0 and n % chunk == 0 for pos, n in writes[:-1])
    r = TokenShardReader(tmp_path / "s.tok")
    assert r.verify() == [] and r.num_tokens == facts["tokens"] == sum(len(d) for d in docs)
    assert r.tokens.tolist() == np.concatenate(docs).tolist()
    assert r.blocks["offset"][0] == 64 and (np.diff(r.blocks["offset"]) == MIB).all()
