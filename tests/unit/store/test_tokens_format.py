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
