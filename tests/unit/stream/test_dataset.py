"""StreamingDataset over tokens: packing, exact and elastic resume, balance, order independent of topology."""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.config import Settings
from granary.errors import NotFoundError, StreamError
from granary.store import Store, open_store
from granary.stream import StateMismatchError, StreamingDataset, StreamingLoader
from tests.unit.stream.conftest import make_docs, write_tokens

SEQ = 16


def _ds(store: Store, *, rank: int = 0, world: int = 1, batch: int = 4, **kw: Any) -> StreamingDataset:
    return StreamingDataset("toks", batch_size=batch, seq_len=SEQ, seed=7, store=store, rank=rank,
                            world_size=world, output="numpy", token_dtype="native", **kw)


def _global_steps(store: Store, *, world: int, global_batch: int, steps: int,
                  state: dict[str, Any] | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Run ``world`` ranks in lockstep for ``steps`` global steps (over passes); return each step's rows."""
    ranks = [_ds(store, rank=r, world=world, batch=global_batch // world) for r in range(world)]
    if state is not None:
        for ds in ranks:
            ds.load_state_dict(state)
    out: list[np.ndarray] = []
    iters = [iter(ds) for ds in ranks]
    while len(out) < steps:
        try:
            batches = [next(it)["tokens"] for it in iters]
        except StopIteration:
            iters = [iter(ds) for ds in ranks]
            continue
        out.append(np.concatenate(batches))
    states = {str(ds.state_dict()) for ds in ranks}
    assert len({ds.position for ds in ranks}) == 1 and len(states) == 1
    return out, ranks[0].state_dict()


def test_samples_are_packed_across_documents_and_shards(tokens_store: tuple[Store, np.ndarray]) -> None:
    store, flat = tokens_store
    ds = _ds(store, shuffle=False, segment_ids=True)
    n = len(flat) // SEQ
    assert ds.num_samples == n and len(ds.sources[0].shards) >= 5
    rows = np.concatenate([b["tokens"] for b in ds])
    expected = flat[: n * SEQ].reshape(n, SEQ)
    assert np.array_equal(rows[:n], expected)  # sequential order, packed, spanning shard ends
    first = next(iter(_ds(store, shuffle=False, segment_ids=True)))
    docs = make_docs(40, seed=0)
    first_len = len(docs[0])
    assert first["segment_ids"][0].tolist() == [0] * min(SEQ, first_len) + [1] * max(0, SEQ - first_len)


def test_each_epoch_is_a_permutation_and_epochs_differ(tokens_store: tuple[Store, np.ndarray]) -> None:
    store, flat = tokens_store
    n = len(flat) // SEQ
    expected = {row.tobytes() for row in flat[: n * SEQ].reshape(n, SEQ)}
    steps, _ = _global_steps(store, world=1, global_batch=8, steps=2 * (-(-n // 8)) + 1)
    stream = np.concatenate(steps)
    epoch0, epoch1 = stream[:n], stream[n : 2 * n]
    assert {r.tobytes() for r in epoch0} == expected and len({r.tobytes() for r in epoch0}) == n
    assert {r.tobytes() for r in epoch1} == expected
    assert not np.array_equal(epoch0, epoch1)


@pytest.mark.parametrize(("before", "after"), [(1, 1), (2, 2), (4, 2), (2, 4), (1, 4)])
def test_resume_is_exact_across_world_sizes(tokens_store: tuple[Store, np.ndarray], before: int, after: int) -> None:
    store, _ = tokens_store
    full, _ = _global_steps(store, world=1, global_batch=8, steps=100)
    for stop_at in (1, 37, 47, 60):  # 47 ends the first pass (373 samples / 8), 60 is inside epoch 1
        head, state = _global_steps(store, world=before, global_batch=8, steps=stop_at)
        tail, _ = _global_steps(store, world=after, global_batch=8, steps=100 - stop_at, state=state)
        assert all(np.array_equal(a, b) for a, b in zip(head + tail, full, strict=True)), (before, after, stop_at)


def test_resume_through_dataloader_workers_is_exact(tokens_store: tuple[Store, np.ndarray]) -> None:
    store, _ = tokens_store
    full, _ = _global_steps(store, world=1, global_batch=8, steps=30)
    got: list[np.ndarray] = []
    loaders = [StreamingLoader(_ds(store, rank=r, world=2), num_workers=2) for r in range(2)]
    for batches in zip(*loaders, strict=False):
        got.append(np.concatenate([b["tokens"] for b in batches]))
        if len(got) == 11:
            break
    state = loaders[0].state_dict()
    assert state["position"] == 11 * 8
    resumed = StreamingLoader(_ds(store, rank=0, world=1, batch=8), num_workers=1)
    resumed.load_state_dict(state)
    for batch in resumed:
        got.append(batch["tokens"])
        if len(got) == 30:
            break
    assert all(np.array_equal(a, b) for a, b in zip(got, full, strict=True))


@cache
def _shared_store() -> Store:
    home = Path(tempfile.mkdtemp(prefix="granary-stream-prop-"))
    store = open_store(Settings.from_env(home=home))
    write_tokens(store, "toks", make_docs(30, seed=3), shard_tokens=700)
    return store


@settings(max_examples=25, deadline=None)
@given(world=st.sampled_from([1, 2, 3, 6]), workers=st.integers(1, 3), position=st.integers(0, 700),
       shuffle=st.sampled_from(["global", "block", "none"]))
def test_order_does_not_depend_on_ranks_or_workers(world: int, workers: int, position: int, shuffle: str) -> None:
    store = _shared_store()
    reference = _ds(store, batch=6, shuffle=shuffle)
    steps = reference.steps_per_pass(position)
    want = [reference.sample_ids(position, k) for k in range(steps)]
    got: list[list[tuple[int, int]]] = [[] for _ in range(steps)]
    for rank in range(world):
        ds = _ds(store, rank=rank, world=world, batch=6 // world, shuffle=shuffle)
        for worker in range(workers):
            for k in range(worker, steps, workers):
                got[k].extend(ds.sample_ids(position, k))
    assert got == want


def test_ranks_yield_equal_batch_counts(tokens_store: tuple[Store, np.ndarray]) -> None:
    store, _ = tokens_store
    counts = {len(list(_ds(store, rank=r, world=3, batch=5))) for r in range(3)}
    assert counts == {-(-373 // 15)}


def test_state_mismatch_and_bad_refs_are_clear_errors(tokens_store: tuple[Store, np.ndarray]) -> None:
    store, _ = tokens_store
    state = _ds(store).state_dict()
    other_seed = StreamingDataset("toks", batch_size=4, seq_len=SEQ, seed=8, store=store, output="numpy")
    with pytest.raises(StateMismatchError, match="seed=7 but this loader has seed=8"):
        other_seed.load_state_dict(state)
    other_len = StreamingDataset("toks", batch_size=4, seq_len=SEQ + 1, seed=7, store=store, output="numpy")
    with pytest.raises(StateMismatchError, match=r"num_samples|seq_len"):
        other_len.load_state_dict(state)
    with pytest.raises(StreamError, match="not a granary stream state"):
        other_seed.load_state_dict({"position": 3})
    with pytest.raises(NotFoundError):
        StreamingDataset("nope", batch_size=4, seq_len=SEQ, store=store)
    with pytest.raises(StreamError, match="pass seq_len"):
        StreamingDataset("toks", batch_size=4, store=store)
    with pytest.raises(StreamError, match="fewer than one sample"):
        StreamingDataset("toks", batch_size=4, seq_len=10**7, store=store)
    with pytest.raises(ValueError, match="batch_size"):
        StreamingDataset("toks", batch_size=0, seq_len=SEQ, store=store)


def test_state_from_another_version_is_rejected(tokens_store: tuple[Store, np.ndarray]) -> None:
    store, _ = tokens_store
    state = _ds(store).state_dict()
    with store.transaction("toks") as txn:
        txn.write_tokens([np.arange(50, dtype=np.uint16)], dtype="uint16")
        txn.commit(message="more")
    with pytest.raises(StateMismatchError, match="versions"):
        _ds(store).load_state_dict(state)


def test_torch_output_and_int64_default(tokens_store: tuple[Store, np.ndarray]) -> None:
    import torch

    store, flat = tokens_store
    ds = StreamingDataset("toks", batch_size=2, seq_len=SEQ, store=store, shuffle=False)
    batch = next(iter(ds))
    assert batch["tokens"].dtype == torch.int64 and batch["tokens"].shape == (2, SEQ)
    assert batch["tokens"][1].tolist() == flat[SEQ : 2 * SEQ].tolist()
    assert isinstance(ds, torch.utils.data.IterableDataset)


def test_pickled_dataset_reopens_the_pinned_version(tokens_store: tuple[Store, np.ndarray]) -> None:
    import pickle

    store, _ = tokens_store
    ds = _ds(store)
    it = iter(ds)
    next(it)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.position == ds.position == 4
    with store.transaction("toks") as txn:  # a newer version must not leak into the clone
        txn.write_tokens([np.arange(500, dtype=np.uint16)], dtype="uint16")
        txn.commit(message="newer")
    again = pickle.loads(pickle.dumps(clone))
    assert np.array_equal(next(iter(again))["tokens"], next(it)["tokens"])
    assert again.state_dict()["versions"] == ds.state_dict()["versions"]


def test_dataloader_workers_after_an_in_process_pass(tokens_store: tuple[Store, np.ndarray]) -> None:
    """Forked workers must not inherit a half-finished background verifier (its lock, its thread)."""
    store, _ = tokens_store
    ds = _ds(store, batch=8)
    first = [b["tokens"] for b in ds]  # starts the verifier thread in this process
    ds.set_epoch(0)
    loader = StreamingLoader(ds, num_workers=2)
    again = [b["tokens"] for b in loader]
    assert len(first) == len(again) and all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_dataloader_workers_share_block_verdicts_with_the_parent(tokens_store: tuple[Store, np.ndarray],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks verified by forked workers count for every process of the rank: the parent hashed nothing."""
    import torch.multiprocessing

    from granary.stream.verify import BlockVerifier

    monkeypatch.setattr(BlockVerifier, "announce", lambda self, blocks: None)  # no background hashing anywhere
    store, _ = tokens_store
    ds = _ds(store, batch=8)
    verifier = ds.sources[0].verifier  # type: ignore[union-attr]
    assert not verifier.all_ok
    loader = StreamingLoader(ds, num_workers=2, multiprocessing_context=torch.multiprocessing.get_context("fork"))
    batches = [b["tokens"] for b in loader]
    assert len(batches) == ds.steps_per_pass(0)
    assert verifier._ok == 0 and verifier.refresh()
