"""Token and record sources: corrupt blocks fail loudly, records stream exactly once, mixes keep proportions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.config import Settings
from granary.errors import StreamError
from granary.store import Store, open_store
from granary.store.formats.tokens.layout import DEFAULT_BLOCK_BYTES
from granary.stream import CorruptBlockError, Mix, StreamingDataset
from granary.stream.pack import PackedLayout, segment_ids
from tests.unit.stream.conftest import make_docs, write_tokens


def _corrupt_one_block(store: Store, name: str) -> tuple[str, int]:
    """Flip a byte in the second block of the first shard; return (shard key, block index)."""
    entry = store.manifest(name).shards[0]
    path = Path(store.local_path(entry) or "")
    block_tokens = int(entry.meta["block_tokens"])
    data = bytearray(path.read_bytes())
    data[64 + block_tokens * 2 + 10] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    return entry.key, 1


def test_a_corrupt_block_fails_with_shard_and_block_and_never_yields(tmp_path: Path) -> None:
    store = open_store(Settings.from_env(home=tmp_path / "h"))
    block_tokens = DEFAULT_BLOCK_BYTES // 2
    docs = [np.full(block_tokens, 7, dtype=np.uint16), np.full(block_tokens, 9, dtype=np.uint16)]
    write_tokens(store, "big", docs, shard_tokens=10 * block_tokens)
    key, block = _corrupt_one_block(store, "big")
    ds = StreamingDataset("big", batch_size=64, seq_len=1024, store=store, output="numpy", shuffle=False,
                          num_threads=1)
    it = iter(ds)
    for _ in range(block_tokens // 1024 // 64):  # every batch from block 0 is fine
        assert (next(it)["tokens"] == 7).all()
    with pytest.raises(CorruptBlockError) as info:
        next(it)
    assert info.value.key == key and info.value.block == block
    assert f"{key} block {block} failed its checksum" in str(info.value)
    unchecked = StreamingDataset("big", batch_size=64, seq_len=1024, store=store, output="numpy", shuffle=False,
                                 verify=False, num_threads=0)
    assert sum(1 for _ in unchecked) == 2 * block_tokens // 1024 // 64


def test_layout_pieces_match_a_naive_concatenation() -> None:
    tokens = [5, 17, 3, 40, 16]
    layout = PackedLayout.build(tokens, 8)
    flat = np.arange(sum(tokens))
    starts = np.concatenate([[0], np.cumsum(tokens)])
    for sample in range(layout.num_samples):
        got = np.concatenate([np.arange(starts[s] + lo, starts[s] + hi) for s, lo, hi in layout.pieces(sample)])
        assert np.array_equal(got, flat[sample * 8 : (sample + 1) * 8])
    shard, local, aligned = layout.locate(np.arange(layout.num_samples))
    assert aligned.tolist() == [len(p) == 1 for p in map(layout.pieces, range(layout.num_samples))]
    assert np.array_equal(starts[shard] + local, np.arange(layout.num_samples) * 8)
    ids = segment_ids(np.array([0, 3, 10]), np.array([0, 8]), 8)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=12).filter(lambda t: sum(t) > 0),
       st.integers(1, 1 << 21))
def test_shard_of_matches_a_binary_search(tokens: list[int], max_buckets: int) -> None:
    """The bucket lookup finds the same shard as a binary search, with empty shards and any bucket count."""
    PackedLayout.MAX_BUCKETS, saved = max_buckets, PackedLayout.MAX_BUCKETS
    try:
        layout = PackedLayout.build(tokens, 1)
    finally:
        PackedLayout.MAX_BUCKETS = saved
    offsets = np.arange(sum(tokens))
    expected = np.searchsorted(layout.shard_starts, offsets, side="right") - 1
    assert np.array_equal(layout.shard_of(offsets), expected)


def test_records_stream_exactly_once_per_epoch_across_ranks(docs_store: Store) -> None:
    seen: list[str] = []
    for rank in range(2):
        ds = StreamingDataset("docs", batch_size=5, seed=3, store=docs_store, rank=rank, world_size=2)
        for batch in ds:
            seen.extend(r["id"] for r in batch)  # type: ignore[index]
    ids = {f"d{p}-{i}" for p in range(3) for i in range(p * 20, p * 20 + (20 if p < 2 else 10))}
    assert len(seen) == 50 and set(seen) == ids
    write_tokens(docs_store, "toks", make_docs(5, seed=1), shard_tokens=100)
    with pytest.raises(StreamError, match="cannot mix tokens and documents"):
        StreamingDataset(Mix(["docs", "toks"], weights=[1, 1]), batch_size=2, seq_len=8, store=docs_store)


def test_mixed_tokens_follow_weights_and_resume_exactly(tstore: Store) -> None:
    write_tokens(tstore, "a", [np.full(4000, 1, dtype=np.uint16)], shard_tokens=1000)
    write_tokens(tstore, "b", [np.full(4000, 2, dtype=np.uint16)], shard_tokens=1000)
    mix = Mix(["a", "b"], weights=[3, 1])

    def make() -> StreamingDataset:
        return StreamingDataset(mix, batch_size=8, seq_len=10, seed=1, store=tstore, output="numpy",
                                token_dtype="native", num_threads=0)

    full = [b["tokens"][:, 0] for b in make()]
    stream = np.concatenate(full)
    share = np.cumsum(stream == 1) / np.arange(1, len(stream) + 1)
    assert abs(share[-1] - 0.75) < 0.01 and np.all(np.abs(share[20:] - 0.75) < 0.05)
    ds = make()
    it = iter(ds)
    head = [next(it)["tokens"][:, 0] for _ in range(13)]
    state = ds.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    tail = [b["tokens"][:, 0] for b in resumed]
    assert np.array_equal(np.concatenate(head + tail), stream)


@pytest.mark.parametrize(("budget", "mapped"), [("0", False), (str(1 << 40), True)])
def test_pages_are_mapped_ahead_only_for_versions_within_the_budget(
        tokens_store: tuple[Store, np.ndarray], monkeypatch: pytest.MonkeyPatch, budget: str, mapped: bool) -> None:
    """Mapping every page of a version larger than memory would read all of it from disk at open."""
    import granary.stream.source as source

    store, flat = tokens_store
    calls: list[int] = []
    monkeypatch.setattr(source, "_populate_all", lambda arrays: calls.append(len(arrays)))
    monkeypatch.setenv("GRANARY_POPULATE_BYTES", budget)
    ds = StreamingDataset("toks", batch_size=2, seq_len=8, store=store, output="numpy", shuffle=False,
                          token_dtype="native")
    assert np.array_equal(next(iter(ds))["tokens"].ravel(), flat[:16])  # reads right either way
    assert calls == ([6] if mapped else [])
