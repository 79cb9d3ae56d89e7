"""Fixed-length token samples of a tokens version: memory-mapped local shards or cached remote blocks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.lib.stride_tricks import as_strided

from granary.errors import StreamError
from granary.store.formats.tokens import TokenShardReader
from granary.stream import background
from granary.stream.pack import PackedLayout, segment_ids
from granary.stream.shards import BlockDecryptor, LazyDecryptedShard, open_lazy
from granary.stream.verify import BlockVerifier, populate

if TYPE_CHECKING:
    from granary.store import Manifest, ShardEntry, Store
    from granary.stream.cache import BlockCache

log = logging.getLogger(__name__)


class TokenShard(Protocol):
    """What the token source needs from one shard."""

    key: str
    num_tokens: int
    block_tokens: int
    doc_offsets: np.ndarray

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the shard (remote shards verify on cache fill)."""
        ...


class LocalTokenShard:
    """A memory-mapped local token shard (verification is done by the source's BlockVerifier)."""

    def __init__(self, path: str, key: str) -> None:
        reader = TokenShardReader(path, name=key)
        self.key = key
        self.num_tokens = reader.num_tokens
        self.block_tokens = reader.block_tokens
        self.doc_offsets = np.asarray(reader.doc_offsets, dtype=np.int64)
        self.tokens: np.ndarray = np.asarray(reader.tokens).view(np.ndarray)
        self.expected = np.asarray(reader.blocks["xxh3"], dtype=np.uint64)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` (a view)."""
        return self.tokens[start:stop]


def _quarter_of_ram_or(env: str) -> int:
    """Bytes from the environment variable ``env``, else a quarter of the machine's RAM."""
    import os

    raw = os.environ.get(env)
    if raw:
        return int(raw)
    import psutil

    return int(psutil.virtual_memory().total // 4)


def populate_budget() -> int:
    """Largest version (bytes) whose pages are all mapped when it opens (``GRANARY_POPULATE_BYTES``, default 1/4
    of RAM); larger versions are mapped page by page as they are read."""
    return _quarter_of_ram_or("GRANARY_POPULATE_BYTES")


def decrypt_memory_budget() -> int:
    """Bytes of decrypted tokens a source may hold in memory (``GRANARY_DECRYPT_MEMORY_BYTES``, default 1/4 of RAM)."""
    return _quarter_of_ram_or("GRANARY_DECRYPT_MEMORY_BYTES")


@dataclass(frozen=True)
class TokenPlan:
    """Precomputed addresses of a chunk of samples (so a batch costs one fancy index): element index in the
    virtual view, whether each sample lies in one shard, and the first/last global block it touches."""

    samples: np.ndarray
    elements: np.ndarray
    aligned: np.ndarray
    first_block: np.ndarray
    last_block: np.ndarray


class TokenSource:
    """Fixed-length packed samples of a tokens version (see :class:`PackedLayout`).

    Args:
        store: the store holding the version.
        manifest: the version's manifest.
        seq_len: tokens per sample.
        verify: check block checksums before any token of a block is served (once per block per process).
        cache: block cache; shards without a local path always go through one (default under GRANARY_HOME),
            and passing one stages local shards through it too (e.g. from a slow network file system).
    """

    def __init__(self, store: Store, manifest: Manifest, *, seq_len: int, verify: bool = True,
                 cache: BlockCache | None = None) -> None:
        if manifest.kind != "tokens":
            raise StreamError(f"{manifest.dataset}@{manifest.version_id[:12]} is a {manifest.kind} version",
                              hint="tokenize it first: granary tokenize REF --tokenizer PATH --output NAME")
        self.version_id = manifest.version_id
        self.seq_len = seq_len
        self._cache = cache
        self.shards: list[TokenShard] = [self._open(store, e) for e in manifest.shards]
        dtypes = {str(e.meta.get("dtype", "uint16")) for e in manifest.shards}
        if len(dtypes) > 1:
            raise StreamError(f"version {manifest.version_id[:12]} mixes token dtypes {sorted(dtypes)}")
        self.dtype = np.dtype(dtypes.pop() if dtypes else "uint16")
        decryptor = self._decrypt_in_memory()
        self.layout = PackedLayout.build([s.num_tokens for s in self.shards], seq_len)
        if self.layout.num_samples == 0:
            raise StreamError(f"version {manifest.version_id[:12]} has {self.layout.shard_starts[-1]} tokens, "
                              f"fewer than one sample of seq_len={seq_len}", hint="use a smaller --seq-len")
        # "local": every shard is in this process's address space and checked block by block before use
        # (memory-mapped plain shards: xxh3; encrypted ones decrypted lazily: AES-GCM)
        self._local = decryptor is not None or all(isinstance(s, LocalTokenShard) for s in self.shards)
        self._doc_starts: np.ndarray | None = None
        self._virtual: np.ndarray | None = None
        self._elem_base = np.zeros(len(self.shards), dtype=np.int64)
        local = [s for s in self.shards if isinstance(s, LocalTokenShard)]
        self._block_tokens = np.array([s.block_tokens for s in self.shards], dtype=np.int64)
        if decryptor is not None:
            self.verifier: BlockVerifier = decryptor  # decryption is never skipped: verify= is about xxh3
            self._build_local_index()
        else:
            self.verifier = BlockVerifier([s.key for s in local], [s.tokens for s in local],
                                          [s.block_tokens for s in local], [s.expected for s in local])
            self.verifier.all_ok = self.verifier.all_ok or not verify or not self._local
        if local and self._local:
            self._build_local_index()
            # Map every page ahead of the reader and the verifier: one madvise per shard maps the page cache
            # several times faster than page faults (or per-block madvise calls) racing from two threads. Only
            # for versions that fit the budget: on a larger one it would read the whole version from disk.
            arrays = [s.tokens for s in local]
            if sum(a.nbytes for a in arrays) <= populate_budget():
                background.start(_populate_all, arrays, name="granary-populate")

    def _open(self, store: Store, entry: ShardEntry) -> TokenShard:
        if "enc" in entry.meta:  # decrypted in memory by the security layer, never cached on disk in plaintext
            from granary.secure.tokenshard import EncryptedTokenShard

            return EncryptedTokenShard.open(store, entry)
        path = store.local_path(entry)
        if path is not None and self._cache is None:
            return LocalTokenShard(path, entry.key)
        if self._cache is None:
            from granary.stream.cache import BlockCache

            self._cache = BlockCache.default(store)
        return self._cache.shard(entry)

    def _decrypt_in_memory(self) -> BlockDecryptor | None:
        """A wholly encrypted version that fits the budget is decrypted lazily into memory, block by block, in
        the parallel checking path (see ``granary.stream.shards``); returns its decryptor (None otherwise)."""
        from granary.secure.tokenshard import EncryptedTokenShard

        if not self.shards or not all(isinstance(s, EncryptedTokenShard) for s in self.shards):
            return None
        need = sum(s.num_tokens * s.dtype.itemsize for s in self.shards)  # type: ignore[attr-defined]
        if need > decrypt_memory_budget():
            log.info("encrypted version needs %d bytes decrypted; reading it block by block instead", need)
            return None
        lazy, decryptor = open_lazy(self.shards)
        self.shards = list(lazy)
        return decryptor

    def _build_local_index(self) -> None:
        """One strided view over all memory-mapped shards, so a batch is a single vectorised gather.

        Row ``e`` of ``self._virtual`` is the ``seq_len`` tokens starting at element ``e`` counted from the
        lowest shard mapping; shard ``s`` starts at element ``self._elem_base[s]``. Only rows of samples that
        lie wholly inside one shard are ever indexed (``PackedLayout.locate`` says which), so every read stays
        inside a live mapping; the shard arrays are kept referenced by ``self.shards``.
        """
        arrays = [s.tokens for s in self.shards if isinstance(s, (LocalTokenShard, LazyDecryptedShard))]
        itemsize = self.dtype.itemsize
        addrs = np.array([a.ctypes.data for a in arrays], dtype=np.int64)
        lowest = int(np.argmin(addrs))
        offsets = addrs - addrs[lowest]
        if (offsets % itemsize).any():  # mappings are page aligned, so this does not happen on Linux
            return
        end = max(int(a.ctypes.data) + a.nbytes for a in arrays)
        rows = (end - int(addrs[lowest])) // itemsize - self.seq_len + 1
        self._virtual = as_strided(arrays[lowest], shape=(max(rows, 1), self.seq_len),
                                   strides=(itemsize, itemsize), writeable=False)
        self._elem_base = offsets // itemsize

    @property
    def num_samples(self) -> int:
        """Samples per epoch."""
        return self.layout.num_samples

    def plan(self, samples: np.ndarray) -> TokenPlan:
        """Addresses of many samples at once (vectorised); announces their blocks for background checking.

        Block ids are computed only while some block is unverified (local shards) or for remote shards; once
        every block is verified the plan carries the shard ids in their place (nothing reads them then).
        """
        shard, local, aligned = self.layout.locate(samples)
        elements = self._elem_base[shard] + local
        if self._local and self.verifier.all_ok:
            return TokenPlan(samples=samples, elements=elements, aligned=aligned, first_block=shard, last_block=shard)
        first = self.verifier.base[shard] + local // self._block_tokens[shard] if self._local else shard
        end = np.minimum(local + self.seq_len, self.layout.shard_tokens[shard]) - 1
        last = self.verifier.base[shard] + end // self._block_tokens[shard] if self._local else shard
        plan = TokenPlan(samples=samples, elements=elements, aligned=aligned, first_block=first,
                         last_block=np.minimum(last, len(self.verifier.state) - 1))
        if self._local and not self.verifier.all_ok:
            self.verifier.announce(np.column_stack([first, plan.last_block]).ravel())
        elif not self._local and self._cache is not None:
            self._prefetch(samples)
        return plan

    def plan_2d(self, samples: np.ndarray) -> list[np.ndarray]:
        """The fields of :class:`TokenPlan` for a ``(steps, batch)`` array of samples, each of that shape."""
        plan = self.plan(samples.ravel())
        return [f.reshape(samples.shape) for f in (plan.samples, plan.elements, plan.aligned, plan.first_block,
                                                    plan.last_block)]

    _plan_2d = plan_2d

    @property
    def virtual(self) -> np.ndarray | None:
        """The strided view over every mapped (or decrypted) shard, row ``e`` = ``seq_len`` tokens from element
        ``e``; None when the shards are not all in memory (remote, or encrypted and read block by block)."""
        return self._virtual

    def check(self, fields: list[np.ndarray]) -> None:
        """Check (verify or decrypt) every block the planned samples touch before any of them is read; the
        fields are those of :meth:`plan_2d`, flattened."""
        if not self.verifier.all_ok:
            self._verify(TokenPlan(*fields))

    def copy_sample(self, sample: int, row: np.ndarray) -> None:
        """Copy sample ``sample`` into ``row`` piece by piece (samples crossing shards, shards without a view)."""
        self._copy_pieces(sample, row)

    def plan_rows(self, samples: np.ndarray) -> Iterator[TokenPlan]:
        """One :class:`TokenPlan` per row of a ``(steps, batch)`` array of samples, planned in one call."""
        fields = self._plan_2d(samples)
        for r in range(len(samples)):
            yield TokenPlan(*(f[r] for f in fields))

    def gather_rows(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        """Each row of a ``(steps, batch)`` array of samples gathered in turn, a new array per row.

        The loader's hot path: the rows are planned in one vectorised call; after that a row whose samples
        all lie inside one shard costs one fancy index of the virtual view once every block of the version
        has been verified (before that, the row's blocks are checked first).
        """
        fields = self._plan_2d(samples)
        elements, inside = fields[1], np.all(fields[2], axis=1).tolist()
        direct, verifier = self._virtual, self.verifier
        for r in range(len(samples)):
            if direct is not None and inside[r] and verifier.all_ok:
                yield direct[elements[r]]
            else:
                row_plan = TokenPlan(*(f[r] for f in fields))
                yield self.gather(row_plan.samples, row_plan)

    def gather(self, samples: np.ndarray, plan: TokenPlan | None = None) -> np.ndarray:
        """The given samples, in order, as a new ``(len(samples), seq_len)`` array."""
        plan = plan or self.plan(samples)
        if not self.verifier.all_ok:
            self._verify(plan)
        if self._virtual is not None and plan.aligned.all():
            return self._virtual[plan.elements]
        out = np.empty((len(samples), self.seq_len), dtype=self.dtype)
        rest = range(len(samples))
        if self._virtual is not None:
            ok = np.flatnonzero(plan.aligned)
            out[ok] = self._virtual[plan.elements[ok]]
            rest = np.flatnonzero(~plan.aligned).tolist()  # type: ignore[assignment]
        for j in rest:
            self._copy_pieces(int(samples[j]), out[j])
        return out

    def _verify(self, plan: TokenPlan) -> None:
        # Aligned samples span their first..last block (at most a few); spanning ones are checked piece by piece.
        wide = plan.aligned & (plan.last_block - plan.first_block > 1)
        self.verifier.ensure(np.concatenate([plan.first_block[plan.aligned], plan.last_block[plan.aligned]]))
        for j in np.flatnonzero(wide).tolist():
            self.verifier.ensure(np.arange(plan.first_block[j], plan.last_block[j] + 1))

    def _copy_pieces(self, sample: int, row: np.ndarray) -> None:
        pos = 0
        for s, lo, hi in self.layout.pieces(sample):
            shard = self.shards[s]
            if isinstance(shard, (LocalTokenShard, LazyDecryptedShard)) and not self.verifier.all_ok:
                base = int(self.verifier.base[s])
                bt = shard.block_tokens
                self.verifier.ensure(np.arange(base + lo // bt, base + (hi - 1) // bt + 1))
            row[pos : pos + hi - lo] = shard.read(lo, hi)
            pos += hi - lo

    def _prefetch(self, samples: np.ndarray) -> None:
        assert self._cache is not None
        from granary.stream.cache import RemoteTokenShard

        wanted: list[tuple[ShardEntry, int, tuple[int, int, int]]] = []

        for sample in samples.tolist():
            for s, lo, hi in self.layout.pieces(sample):
                shard = self.shards[s]
                if isinstance(shard, RemoteTokenShard):
                    wanted.extend((shard.entry, b, shard.span(b)) for b in shard.blocks_of(lo, hi))
        self._cache.prefetch(wanted)

    def doc_starts(self) -> np.ndarray:
        """Global token offsets where documents begin (loaded once)."""
        if self._doc_starts is None:
            parts = [s.doc_offsets[:-1] + int(self.layout.shard_starts[i]) for i, s in enumerate(self.shards)]
            self._doc_starts = np.concatenate(parts) if parts else np.empty(0, np.int64)
        return self._doc_starts

    def segment_ids(self, samples: np.ndarray) -> np.ndarray:
        """Document index of every token inside each sample (for block-diagonal attention masks)."""
        return segment_ids(self.doc_starts(), samples.astype(np.int64) * self.seq_len, self.seq_len)


def _populate_all(arrays: list[np.ndarray]) -> None:
    for a in arrays:
        if background.exiting():
            return
        populate(a)
