"""Anchor loaders for benchmarks/stream_bench.py: LitData, MosaicML Streaming and WebDataset.

Runs inside ``benchmarks/.venv-stream-anchors`` (see stream_bench.py for setup). Reads the raw samples from
the flat uint16 file written by stream_bench.py, converts them to each anchor's own format once, then
measures a shuffled, batch-64, one-process read. Prints one JSON object per anchor on stdout.
Sample ``i`` carries its id in its first two tokens, so shards-per-batch is measured from the content.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

SEQ = 2048
SHARDS = 16


def _stub_torchvision() -> None:
    """MosaicML Streaming imports torchvision's vision datasets at import time; the PyPI torchvision wheel does not
    load against the CPU torch pinned here, and the token benchmark needs none of it."""
    import importlib.machinery

    for name in ("torchvision", "torchvision.datasets", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.io"):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__getattr__ = _stub_attr  # type: ignore[method-assign]
        sys.modules[name] = mod


def _stub_attr(attr: str) -> type:
    if attr.startswith("__"):
        raise AttributeError(attr)
    return type(attr, (), {})


def _ids(batch: np.ndarray) -> np.ndarray:
    b = batch.astype(np.int64)
    return b[:, 0] | (b[:, 1] << 16)


def _report(name: str, count: int, seconds: float, shards: list[int], extra: dict | None = None) -> None:
    print(json.dumps({"anchor": name, "samples": count, "seconds": seconds, "samples_per_s": count / seconds,
                      "gb_per_s": count * SEQ * 2 / seconds / 1e9, "shards_per_batch": float(np.mean(shards)),
                      **(extra or {})}), flush=True)


def litdata_bench(flat: np.ndarray, work: Path, limit: int) -> None:
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader, optimize

    out = work / "litdata"
    n = flat.shape[0]
    if not (out / "index.json").exists():
        t = time.perf_counter()
        optimize(fn=_lit_chunk, inputs=[(str(work / "flat.u16"), i, min(n, i + 16384)) for i in range(0, n, 16384)],
                 output_dir=str(out), chunk_size=n // SHARDS * SEQ, item_loader=TokensLoader(), num_workers=2)
        print(f"litdata convert {time.perf_counter() - t:.1f}s", file=sys.stderr)
    ds = StreamingDataset(str(out), item_loader=TokensLoader(block_size=SEQ), shuffle=True, seed=0)
    loader = StreamingDataLoader(ds, batch_size=64, num_workers=0)
    per = n // SHARDS
    shards, count = [], 0
    t = time.perf_counter()
    for batch in loader:
        ids = _ids(batch.numpy())
        shards.append(len(np.unique(ids // per)))
        count += len(ids)
        if count >= limit:
            break
    _report("litdata", count, time.perf_counter() - t, shards)


def _lit_chunk(spec: tuple[str, int, int]):  # type: ignore[no-untyped-def]
    import torch

    path, lo, hi = spec
    mm = np.memmap(path, dtype=np.uint16, mode="r").reshape(-1, SEQ)
    yield torch.from_numpy(np.ascontiguousarray(mm[lo:hi]).reshape(-1))


def mosaic_bench(flat: np.ndarray, work: Path, limit: int) -> None:
    _stub_torchvision()
    from streaming import MDSWriter, StreamingDataset
    from torch.utils.data import DataLoader

    out = work / "mosaic"
    n = flat.shape[0]
    if not (out / "index.json").exists():
        t = time.perf_counter()
        with MDSWriter(out=str(out), columns={"tokens": "ndarray:uint16"}, size_limit=n // SHARDS * SEQ * 2 + 65536,
                       compression=None) as w:
            for i in range(n):
                w.write({"tokens": flat[i]})
        print(f"mosaic convert {time.perf_counter() - t:.1f}s", file=sys.stderr)
    ds = StreamingDataset(local=str(out), shuffle=True, shuffle_seed=0, batch_size=64)
    loader = DataLoader(ds, batch_size=64, num_workers=0)
    per = n // SHARDS
    shards, count = [], 0
    t = time.perf_counter()
    for batch in loader:
        ids = _ids(batch["tokens"].numpy())
        shards.append(len(np.unique(ids // per)))
        count += len(ids)
        if count >= limit:
            break
    _report("mosaicml-streaming", count, time.perf_counter() - t, shards)


def webdataset_bench(flat: np.ndarray, work: Path, limit: int) -> None:
    import io

    import webdataset as wds

    out = work / "wds"
    n = flat.shape[0]
    per = n // SHARDS
    if not (out / f"shard-{SHARDS - 1:02d}.tar").exists():
        out.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        for s in range(SHARDS):
            with wds.TarWriter(str(out / f"shard-{s:02d}.tar")) as w:
                for i in range(s * per, (s + 1) * per):
                    buf = io.BytesIO()
                    np.save(buf, flat[i])
                    w.write({"__key__": f"{i:08d}", "tokens.npy": buf.getvalue()})
        print(f"webdataset convert {time.perf_counter() - t:.1f}s", file=sys.stderr)
    urls = [str(out / f"shard-{s:02d}.tar") for s in range(SHARDS)]
    pipe = (wds.WebDataset(urls, shardshuffle=True, seed=0, empty_check=False).shuffle(1000).decode()
            .to_tuple("tokens.npy").batched(64))
    shards, count = [], 0
    t = time.perf_counter()
    for (batch,) in pipe:
        ids = _ids(np.asarray(batch))
        shards.append(len(np.unique(ids // per)))
        count += len(ids)
        if count >= limit:
            break
    _report("webdataset", count, time.perf_counter() - t, shards)


def main() -> None:
    work = Path(sys.argv[1])
    which = sys.argv[2].split(",")
    limits = {"litdata": 131072, "mosaic": 12800, "webdataset": 32768}
    flat = np.memmap(work / "flat.u16", dtype=np.uint16, mode="r").reshape(-1, SEQ)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in which:
        {"litdata": litdata_bench, "mosaic": mosaic_bench, "webdataset": webdataset_bench}[name](
            flat, work, limits[name])


if __name__ == "__main__":
    main()
