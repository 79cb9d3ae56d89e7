"""Packing: fixed-length samples cut from the concatenated token stream of all shards of a version."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PackedLayout:
    """Where each fixed-length sample lies in the shards of a tokens version.

    Sample ``i`` is the global tokens ``[i * seq_len, (i + 1) * seq_len)`` of the concatenation of all shards
    in manifest order; samples cross document and shard boundaries (packing), the tail shorter than
    ``seq_len`` is not used. A sample that starts in shard ``s`` and ends in it is "aligned": it is row
    ``i - first_sample[s]`` of the 2-D view ``tokens[phase[s] : phase[s] + full[s] * seq_len]``.

    Attributes:
        seq_len: tokens per sample.
        shard_tokens: tokens per shard.
        shard_starts: global token offset of each shard (``len(shards) + 1`` entries).
        first_sample: first sample that starts inside each shard.
        phase: local token offset of that sample in the shard.
        full: number of samples that start and end inside each shard.
        grain: tokens per bucket of ``bucket_shard``.
        bucket_shard: the shard holding the first token of each bucket of ``grain`` tokens (a bucket holds at
            most a few shard boundaries, so locating a token is a lookup and a short correction instead of a
            binary search: ~4x faster for a batch of samples).
    """

    seq_len: int
    shard_tokens: np.ndarray
    shard_starts: np.ndarray
    first_sample: np.ndarray
    phase: np.ndarray
    full: np.ndarray
    grain: int
    bucket_shard: np.ndarray

    MAX_BUCKETS = 1 << 20

    @classmethod
    def build(cls, shard_tokens: list[int] | np.ndarray, seq_len: int) -> PackedLayout:
        """Compute the layout from the token count of each shard."""
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        tokens = np.asarray(shard_tokens, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(tokens)]).astype(np.int64)
        first = -(-starts[:-1] // seq_len)
        phase = first * seq_len - starts[:-1]
        full = np.maximum(0, (tokens - phase) // seq_len)
        total = int(starts[-1])
        nonempty = tokens[tokens > 0]
        grain = max(int(nonempty.min()) if nonempty.size else 1, -(-total // cls.MAX_BUCKETS), 1)
        buckets = np.arange(0, total + grain, grain, dtype=np.int64)
        bucket_shard = np.searchsorted(starts, buckets, side="right") - 1
        return cls(seq_len=seq_len, shard_tokens=tokens, shard_starts=starts, first_sample=first, phase=phase,
                   full=full, grain=grain, bucket_shard=np.minimum(bucket_shard, len(tokens) - 1))

    @property
    def num_samples(self) -> int:
        """Samples in one epoch (the tail shorter than ``seq_len`` is left out)."""
        return int(self.shard_starts[-1] // self.seq_len)

    def locate(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each sample: its shard, its local start token and whether it is aligned (inside one shard)."""
        starts = np.asarray(samples, dtype=np.int64) * self.seq_len
        shard = self.shard_of(starts)
        local = starts - self.shard_starts[shard]
        aligned = local + self.seq_len <= self.shard_tokens[shard]
        return shard, local, aligned

    def shard_of(self, tokens: np.ndarray) -> np.ndarray:
        """The shard holding each global token offset (each in ``[0, total tokens)``)."""
        shard = self.bucket_shard[tokens // self.grain]
        while True:  # step over the boundaries inside a bucket (at most one unless shards are tiny or empty)
            over = tokens >= self.shard_starts[shard + 1]
            if not over.any():
                return shard
            shard += over

    def pieces(self, sample: int) -> list[tuple[int, int, int]]:
        """The ``(shard, local_start, local_stop)`` pieces of one sample, in order (several when it spans)."""
        start, stop = sample * self.seq_len, (sample + 1) * self.seq_len
        out = []
        shard = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        while start < stop:
            base = int(self.shard_starts[shard])
            take = min(stop, int(self.shard_starts[shard + 1])) - start
            if take > 0:
                out.append((shard, start - base, start - base + take))
                start += take
            shard += 1
        return out


def segment_ids(doc_starts: np.ndarray, sample_starts: np.ndarray, seq_len: int) -> np.ndarray:
    """Per-token document index inside each sample (0 for the first document piece, +1 at every boundary).

    Args:
        doc_starts: sorted global token offsets where documents begin.
        sample_starts: global token offset of each sample.
        seq_len: tokens per sample.

    Returns:
        An int32 array of shape ``(len(sample_starts), seq_len)``; equal ids mark tokens of one document, so
        a block-diagonal attention mask is ``ids[:, :, None] == ids[:, None, :]``.
    """
    grid = sample_starts[:, None] + np.arange(seq_len, dtype=np.int64)[None, :]
    ids = np.searchsorted(doc_starts, grid, side="right")
    return (ids - ids[:, :1]).astype(np.int32)
