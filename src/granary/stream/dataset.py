"""StreamingDataset: exact, resumable, balanced batches of a tokens or documents version (or a Mix of them)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from granary.errors import StreamError
from granary.stream.gather import BufferPool, make_gather
from granary.stream.group import DEFAULT_GROUP, GroupGather
from granary.stream.mix import Mix
from granary.stream.order import MixedStream, SampleStream
from granary.stream.partition import Topology, detect_rank, detect_worker, pass_steps, rank_slice, worker_steps
from granary.stream.prefetch import ordered_map
from granary.stream.records import RecordSource
from granary.stream.source import TokenPlan, TokenSource
from granary.stream.state import StreamState

if TYPE_CHECKING:
    from granary.store import Store
    from granary.stream.cache import BlockCache

log = logging.getLogger(__name__)

Batch = Any  # tokens: dict of arrays/tensors; documents: list of record dicts
_PLAN_STEPS = 64  # steps whose sample ids are computed in one vectorised call


class StreamingDataset:
    """A PyTorch ``IterableDataset`` of batches over a dataset version (or a :class:`Mix` of versions).

    Tokens versions yield ``{"tokens": (batch_size, seq_len)}`` (+ ``"segment_ids"`` when asked): fixed-length
    samples packed across document and shard boundaries. Documents versions yield a list of record dicts.
    Iterating once is one *pass*: every step starting in the current epoch (see ``granary.stream.partition``).
    Use it with ``DataLoader(ds, batch_size=None, num_workers=K)`` or :class:`granary.stream.StreamingLoader`.

    Args:
        ref: a dataset ref (``web``, ``web@main``, ``web@v1``, ``web@3fa2c9``) or a :class:`Mix`.
        batch_size: samples per batch on this rank (global batch = batch_size * world_size).
        seq_len: tokens per sample (tokens versions; required for them).
        seed: shuffle seed.
        shuffle: ``True`` (the ``global`` shuffle), ``False`` (``none``) or a registry name
            (``global``, ``block``, ``none``).
        rank, world_size: this rank; default torch.distributed, else ``RANK``/``WORLD_SIZE``, else 0/1.
        store: the store (default ``open_store()``).
        verify: verify block checksums the first time each block is read in this process.
        segment_ids: add per-token document ids for attention masks.
        output: ``torch`` tensors or ``numpy`` arrays.
        token_dtype: ``int64`` (what embeddings take), ``int32`` or ``native`` (the stored uint16/uint32).
        num_threads: threads gathering batches ahead of the consumer. 0 (the default) gathers in the consuming
            thread; N > 0 gathers in N threads, each copying whole groups of batches with a native kernel outside
            the GIL (``torch.index_select``; with numpy, the copy loop also runs without the GIL), delivered in
            order. Mixes and documents versions use N reader threads that each build whole batches.
        prefetch: batches that may wait ready ahead of the consumer (per reader thread for mixes and documents).
        gather: the gather kernel for tokens: ``torch`` (``index_select``, outside the GIL), ``numpy``, or ``auto``
            (torch when ``output="torch"`` or torch is already imported, else numpy: no torch import for numpy
            readers).
        pin_memory: deliver token batches in page-locked memory (for ``.to("cuda", non_blocking=True)``); with
            no accelerator, ordinary memory with a warning.
        columns: columns of a documents version to read (default all).
        cache: block cache for remote (``s3://``) stores; default one under ``GRANARY_HOME/cache``.
        purpose: the declared purpose of this read (e.g. ``pretraining``); with the security layer on, a dataset
            whose allowed purposes exclude it is refused, and every open is audited.
    """

    def __init__(
        self,
        ref: str | Mix,
        *,
        batch_size: int,
        seq_len: int | None = None,
        seed: int = 0,
        shuffle: bool | str = True,
        rank: int | None = None,
        world_size: int | None = None,
        store: Store | None = None,
        verify: bool = True,
        segment_ids: bool = False,
        output: Literal["torch", "numpy"] = "torch",
        token_dtype: Literal["int64", "int32", "native"] = "int64",
        num_threads: int = 0,
        prefetch: int = 4,
        columns: list[str] | None = None,
        cache: BlockCache | None = None,
        purpose: str | None = None,
        gather: Literal["auto", "torch", "numpy"] = "auto",
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if output not in ("torch", "numpy") or token_dtype not in ("int64", "int32", "native"):
            raise ValueError(f"bad output={output!r} or token_dtype={token_dtype!r}")
        if num_threads < 0 or prefetch < 1:
            raise ValueError(f"num_threads must be >= 0 and prefetch >= 1, got {num_threads}, {prefetch}")
        self.purpose = purpose
        self.mix = ref if isinstance(ref, Mix) else Mix([ref], weights=[1.0])
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.shuffle = shuffle if isinstance(shuffle, str) else ("global" if shuffle else "none")
        r, w = detect_rank(rank, world_size)
        self.topology = Topology(rank=r, world_size=w)
        self.verify = verify
        self.with_segment_ids = segment_ids
        self.output = output
        self.token_dtype = token_dtype
        self.num_threads = num_threads
        self.prefetch = prefetch
        self.gather = gather
        self.pin_memory = pin_memory
        self._pool: BufferPool | None = None
        if gather not in ("auto", "torch", "numpy"):
            raise ValueError(f"gather must be 'auto', 'torch' or 'numpy', got {gather!r}")
        self.position = 0
        self._columns = columns
        self._cache_given = cache is not None
        self._open(store, columns, cache)
        register_with_torch()
        self._warm()

    def _warm(self) -> None:
        """Announce the blocks of the next steps now, so checking (or fetching) them overlaps the model setup."""
        first = self.sources[0]
        if len(self.sources) == 1 and isinstance(first, TokenSource):
            steps = range(min(_PLAN_STEPS, self.steps_per_pass()))
            first.plan(self.stream.locate(self._positions(self.position, steps).ravel())[1])

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the recipe, not the mappings: a spawned worker reopens the same pinned versions."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("sources", "stream", "_store", "_pool")}
        pinned = [f"{m.dataset}@{m.version_id}" for m in self._manifests]
        state["mix"] = Mix(pinned, weights=list(self.mix.weights))
        state["_settings"] = self._store.settings
        state.pop("_manifests", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from granary.store import open_store

        settings = state.pop("_settings")
        self.__dict__.update(state)
        if self._cache_given:
            log.info("a pickled StreamingDataset uses the default block cache instead of the one it was given")
        self._open(open_store(settings), self._columns, None)

    def _open(self, store: Store | None, columns: list[str] | None, cache: BlockCache | None) -> None:
        if store is None:
            from granary.store import open_store

            store = open_store()
        self._store = store
        self._manifests = []
        sources: list[TokenSource | RecordSource] = []
        for ref in self.mix.sources:
            manifest = store.open_version(ref, purpose=getattr(self, "purpose", None))  # authorized and audited
            self._manifests.append(manifest)
            if manifest.kind not in ("tokens", "documents"):
                raise StreamError(f"{ref} is a {manifest.kind} version; the loader reads tokens or documents")
            if manifest.kind == "tokens":
                if self.seq_len is None:
                    raise StreamError(f"{ref} is a tokens version: pass seq_len", hint="e.g. seq_len=2048")
                sources.append(TokenSource(store, manifest, seq_len=self.seq_len, verify=self.verify, cache=cache))
            else:
                sources.append(RecordSource(store, manifest, columns=columns))
        kinds = {type(s) for s in sources}
        if len(kinds) > 1:
            raise StreamError(f"cannot mix tokens and documents versions: {list(self.mix.sources)}")
        self.sources = sources
        self.kind: Literal["tokens", "documents"] = "tokens" if kinds == {TokenSource} else "documents"
        self.stream = MixedStream(
            [SampleStream(s.num_samples, shuffle=self.shuffle, seed=self.seed + 7919 * k)
             for k, s in enumerate(sources)],
            self.mix.fractions, seed=self.seed)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def global_batch(self) -> int:
        """Samples per global step (``batch_size * world_size``)."""
        return self.batch_size * self.topology.world_size

    @property
    def num_samples(self) -> int:
        """Samples per epoch of the (mixed) stream: the sum over sources."""
        return sum(s.num_samples for s in self.sources)

    @property
    def epoch(self) -> int:
        """The epoch the next batch starts in."""
        return self.position // self.num_samples

    def steps_per_pass(self, position: int | None = None) -> int:
        """Batches each rank yields in the pass starting at ``position`` (default: the current one)."""
        return pass_steps(self.position if position is None else position, self.num_samples, self.global_batch)

    def __len__(self) -> int:
        return self.steps_per_pass()

    def __getitem__(self, index: int) -> Any:
        raise StreamError("StreamingDataset is iterable, not indexable",
                          hint="import torch before creating it, or use granary.stream.StreamingLoader")

    # -- state ---------------------------------------------------------------------------------
    def _state(self, position: int) -> StreamState:
        return StreamState(
            versions=[s.version_id for s in self.sources], weights=list(self.mix.fractions), seed=self.seed,
            shuffle=self.shuffle, seq_len=self.seq_len if self.kind == "tokens" else None,
            num_samples=[s.num_samples for s in self.sources], position=position,
            global_batch=self.global_batch, world_size=self.topology.world_size)

    def state_dict(self) -> dict[str, Any]:
        """The resume state after the batches yielded so far in this process (``num_workers=0``)."""
        return self._state(self.position).to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a state dict (saved with any world size or worker count); checks it fits this stream."""
        saved = StreamState.from_dict(state)
        saved.check_matches(self._state(saved.position))
        self.position = saved.position
        self._warm()

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of ``epoch`` (a fresh order is drawn per epoch)."""
        self.position = epoch * self.num_samples
        self._warm()

    # -- reading -------------------------------------------------------------------------------
    def _positions(self, position: int, steps: range) -> np.ndarray:
        """This rank's stream positions for the given steps, one row per step (see ``partition.rank_slice``)."""
        first = rank_slice(position, 0, batch_size=self.batch_size, topology=self.topology)[0]
        starts = first + np.arange(steps.start, steps.stop, steps.step, dtype=np.int64) * self.global_batch
        return starts[:, None] + np.arange(self.batch_size, dtype=np.int64)[None, :]

    def _chunks(self, position: int, steps: range) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(sources, samples) of ``_PLAN_STEPS`` steps at a time, each of shape ``(steps, batch_size)``: the
        order and the mix are computed for a whole chunk in one vectorised call."""
        for i in range(0, len(steps), _PLAN_STEPS):
            chunk = steps[i : i + _PLAN_STEPS]
            source, samples = self.stream.locate(self._positions(position, chunk).ravel())
            yield source.reshape(len(chunk), -1), samples.reshape(len(chunk), -1)

    def _plan(self, position: int, steps: range) -> Iterator[tuple[np.ndarray, np.ndarray, TokenPlan | None]]:
        """(sources, samples, token plan) of each step; planning a chunk announces its blocks (background
        verification of local shards, prefetch of remote ones) before they are read."""
        first = self.sources[0]
        single = len(self.sources) == 1 and isinstance(first, TokenSource)
        for source, samples in self._chunks(position, steps):
            if single:
                assert isinstance(first, TokenSource)
                plans: list[TokenPlan | None] = list(first.plan_rows(samples))
            else:
                plans = [None] * len(samples)
            yield from zip(source, samples, plans, strict=True)

    def _direct(self, position: int, steps: range, threads: int) -> Iterator[Batch]:
        """The hot path of a single tokens source: one plan per chunk of steps, then one kernel call per group of
        batches into reused buffers, in the consuming thread or in ``threads`` gather threads (each gathering
        whole groups, delivered in order; see ``granary.stream.group``)."""
        source = self.sources[0]
        assert isinstance(source, TokenSource)
        native = self.token_dtype == "native"
        depth = max(2 * threads + 2, -(-self.prefetch // DEFAULT_GROUP))
        keep = 2 * (depth + threads + 2)
        pool = getattr(self, "_pool", None)  # (absent on a dataset unpickled in a worker)
        if pool is None or pool.keep < keep:
            pool = self._pool = BufferPool(keep=keep, pin_memory=self.pin_memory)  # reused by later passes
        kernel = make_gather(self.gather, want_torch=self.pin_memory or (self.output == "torch" and threads > 0),
                             threads=threads)
        reader = GroupGather(source, gather=kernel, pool=pool,
                             out_dtype=source.dtype if native else np.dtype(self.token_dtype), lazy=threads == 0)
        plans = (plan for _, samples in self._chunks(position, steps) for plan in reader.plans(samples))
        groups = ordered_map(reader.gather, plans, num_threads=threads, depth=depth,
                              caller_runs=True) if threads else map(
            reader.gather, plans)
        plain = self.output == "numpy" and not self.with_segment_ids
        for samples, tokens, error in groups:
            if plain:  # the common case, kept lean: a dict per batch and nothing else
                for r in range(len(tokens)):
                    yield {"tokens": tokens[r]}
            else:
                for r in range(len(tokens)):
                    segs = source.segment_ids(samples[r]) if self.with_segment_ids else None
                    yield self._finish(tokens[r], segs)
            if error is not None:
                raise error

    def batch_at(self, position: int, step: int) -> Batch:
        """This rank's batch at ``step`` of the pass starting at ``position`` (a pure function of them)."""
        source, samples, plan = next(self._plan(position, range(step, step + 1)))
        return self._batch(source, samples, plan)

    def sample_ids(self, position: int, step: int) -> list[tuple[int, int]]:
        """``(source, sample)`` of each row of the batch at ``step`` (for tests and audits)."""
        source, samples, _ = next(self._plan(position, range(step, step + 1)))
        return list(zip(source.tolist(), samples.tolist(), strict=True))

    def _batch(self, source: np.ndarray, samples: np.ndarray, plan: TokenPlan | None = None) -> Batch:
        groups = [(0, np.arange(len(samples)), samples)] if len(self.sources) == 1 else [
            (k, np.flatnonzero(source == k), samples[source == k]) for k in np.unique(source).tolist()]
        return self._records(groups) if self.kind == "documents" else self._tokens(groups, plan)

    def _tokens(self, groups: list[tuple[int, np.ndarray, np.ndarray]], plan: TokenPlan | None) -> dict[str, Any]:
        first = self.sources[0]
        assert isinstance(first, TokenSource)
        if len(groups) == 1:
            out = first.gather(groups[0][2], plan)
        else:
            out = np.empty((self.batch_size, first.seq_len), dtype=first.dtype)
        segs = np.empty(out.shape, dtype=np.int32) if self.with_segment_ids else None
        for k, rows, samples in groups:
            source = self.sources[k]
            assert isinstance(source, TokenSource)
            if len(groups) > 1:
                out[rows] = source.gather(samples)
            if segs is not None:
                segs[rows] = source.segment_ids(samples)
        return self._finish(out, segs)

    def _finish(self, tokens: np.ndarray, segs: np.ndarray | None) -> dict[str, Any]:
        if self.token_dtype != "native":
            tokens = tokens.astype(self.token_dtype, copy=False)
        batch: dict[str, Any] = {"tokens": tokens}
        if segs is not None:
            batch["segment_ids"] = segs
        return _to_torch(batch) if self.output == "torch" else batch

    def _records(self, groups: list[tuple[int, np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in range(self.batch_size)]
        for k, rows, samples in groups:
            source = self.sources[k]
            assert isinstance(source, RecordSource)
            for r, record in zip(rows.tolist(), source.gather(samples), strict=True):
                out[r] = record
        return out

    def __iter__(self) -> Iterator[Batch]:
        worker_id, num_workers = detect_worker()
        start = self.position
        steps = self.steps_per_pass(start)
        mine = worker_steps(steps, worker_id, num_workers)
        batches: Iterator[Batch]
        threads = self.num_threads if num_workers == 1 else 0  # DataLoader workers read in their own thread
        if len(self.sources) == 1 and self.kind == "tokens":
            batches = self._direct(start, mine, threads)
        elif threads:
            batches = ordered_map(lambda item: self._batch(*item), self._plan(start, mine),
                                  num_threads=threads, depth=self.prefetch)
        else:
            batches = (self._batch(*item) for item in self._plan(start, mine))
        step = self.global_batch
        if num_workers == 1:
            for i, batch in enumerate(batches, 1):
                self.position = start + i * step
                yield batch
            self.position = start + steps * step
        else:
            yield from batches


def _to_torch(batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(v) for k, v in batch.items()}


def register_with_torch() -> None:
    """Make StreamingDataset an ``IterableDataset`` for torch without importing torch (it costs ~2 s)."""
    if "torch" in sys.modules:
        from torch.utils.data import IterableDataset

        IterableDataset.register(StreamingDataset)
