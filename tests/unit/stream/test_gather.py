"""The grouped, threaded gather path: same batches as sample-by-sample reads, kept batches never overwritten,
buffers reused once free, corrupt blocks stop the stream at the right batch whatever the thread count."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from granary.config import Settings
from granary.store import Store, open_store
from granary.store.formats.tokens.layout import DEFAULT_BLOCK_BYTES
from granary.stream import CorruptBlockError, StreamingDataset
from granary.stream.gather import BufferPool, NumpyGather, TorchGather, make_gather, one_kernel_thread
from tests.unit.stream.conftest import write_tokens
from tests.unit.stream.test_source import _corrupt_one_block


def _expected(flat: np.ndarray, ids: list[tuple[int, int]], seq: int) -> np.ndarray:
    return np.stack([flat[s * seq : (s + 1) * seq] for _, s in ids])


@pytest.mark.parametrize(("gather", "threads", "dtype", "output"), [
    ("torch", 0, "native", "numpy"), ("torch", 2, "int64", "torch"), ("numpy", 0, "int32", "numpy"),
    ("numpy", 3, "native", "numpy"), ("torch", 1, "int64", "numpy"),
    ("auto", 0, "native", "numpy"), ("auto", 0, "native", "torch")])  # the last two: batches gathered lazily
def test_grouped_gather_equals_sample_by_sample_reads(tokens_store: tuple[Store, np.ndarray], gather: str,
                                                      threads: int, dtype: str, output: str) -> None:
    """Every batch of two passes (group sizes ramping 1, 2, 4, ... and samples crossing shards) is the packed
    samples the order names, and batches kept by the caller stay intact while later ones are gathered."""
    store, flat = tokens_store
    seq = 16
    ds = StreamingDataset("toks", batch_size=4, seq_len=seq, seed=3, store=store, output=output,  # type: ignore[arg-type]
                          token_dtype=dtype, num_threads=threads, gather=gather, segment_ids=True)  # type: ignore[arg-type]
    kept = []
    for _ in range(2):
        start = ds.position
        batches = list(ds)
        assert len(batches) == ds.steps_per_pass(start) > 40
        kept += [(start, step, b) for step, b in enumerate(batches)]
    for start, step, batch in kept:
        tokens = np.asarray(batch["tokens"])
        assert tokens.dtype == (np.uint16 if dtype == "native" else np.dtype(dtype))
        assert np.array_equal(tokens, _expected(flat, ds.sample_ids(start, step), seq)), (start, step)
        assert batch["segment_ids"].shape == tokens.shape


def test_buffer_pool_reuses_a_buffer_only_once_nothing_refers_to_it() -> None:
    pool = BufferPool(keep=2)
    a = pool.take((4, 8), np.dtype(np.uint16))
    view = a[1]
    del a
    b = pool.take((4, 8), np.dtype(np.uint16))
    assert b.base is None and not np.shares_memory(b, view)  # `view` still refers to the first buffer
    del view
    c = pool.take((4, 8), np.dtype(np.uint16))
    assert c is not b and pool.allocated == 2  # the first buffer, free again, is reused
    torch = pytest.importorskip("torch")
    held = torch.from_numpy(c[2:])
    del c
    d = pool.take((4, 8), np.dtype(np.uint16))
    assert not np.shares_memory(d, held.numpy())
    assert pool.take((3, 8), np.dtype(np.uint16)).shape == (3, 8)  # another shape: a new buffer


def test_pinned_buffers_fall_back_without_an_accelerator() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pool = BufferPool(pin_memory=True)
        buf = pool.take((2, 4), np.dtype(np.int64))
        assert torch.from_numpy(buf).is_pinned()
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = BufferPool(pin_memory=True)
    assert not pool.pin_memory and "no accelerator" in str(caught[0].message)
    assert pool.take((2, 4), np.dtype(np.int64)).shape == (2, 4)


def test_kernels_agree_and_torch_kernels_run_single_threaded_only_inside_the_gather() -> None:
    torch = pytest.importorskip("torch")
    flat = np.arange(5000, dtype=np.uint16)
    view = np.lib.stride_tricks.as_strided(flat, shape=(5000 - 32 + 1, 32), strides=(2, 2), writeable=False)
    rows = np.random.default_rng(0).integers(0, len(view), 300)
    outs = [np.empty((300, 32), np.uint16) for _ in range(2)]
    TorchGather()(view, rows, outs[0])
    NumpyGather()(view, rows, outs[1])
    assert np.array_equal(outs[0], view[rows]) and np.array_equal(outs[1], view[rows])
    before = torch.get_num_threads()
    with one_kernel_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert make_gather("auto").name == "torch"  # torch is imported here
    assert make_gather("auto", threads=0).name == "numpy"  # gathered in the consuming thread: numpy per batch
    assert make_gather("auto", threads=0, want_torch=True).name == "torch"  # pinned buffers
    assert make_gather("auto", want_torch=True).name == "torch" and make_gather("numpy").name == "numpy"
    with pytest.raises(ValueError, match="gather must be"):
        make_gather("gpu")


@pytest.mark.parametrize("threads", [0, 2])
def test_a_corrupt_block_stops_at_its_batch_whatever_the_grouping(tmp_path: Path, threads: int) -> None:
    store = open_store(Settings.from_env(home=tmp_path / "h"))
    block_tokens = DEFAULT_BLOCK_BYTES // 2
    docs = [np.full(block_tokens, 7, dtype=np.uint16), np.full(block_tokens, 9, dtype=np.uint16)]
    write_tokens(store, "big", docs, shard_tokens=10 * block_tokens)
    key, block = _corrupt_one_block(store, "big")
    ds = StreamingDataset("big", batch_size=16, seq_len=1024, store=store, output="numpy", shuffle=False,
                          num_threads=threads)
    it = iter(ds)
    for _ in range(block_tokens // 1024 // 16):  # every batch from block 0 is delivered, in groups or not
        assert (next(it)["tokens"] == 7).all()
    with pytest.raises(CorruptBlockError) as info:
        next(it)
    assert info.value.key == key and info.value.block == block


def test_import_granary_stream_does_not_import_torch() -> None:
    import subprocess

    code = ("import sys, granary.stream.gather, granary.stream\n"
            "from granary.stream.gather import make_gather\n"
            "assert make_gather('auto').name == 'numpy'\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
