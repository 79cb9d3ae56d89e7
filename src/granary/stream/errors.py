"""Errors of the tokenization and streaming subsystem, carrying their facts as fields."""

from __future__ import annotations

from granary.errors import IntegrityError, StreamError


class CorruptBlockError(IntegrityError, StreamError):
    """A token block failed its xxh3-64 checksum on read (the batch is never delivered).

    Attributes:
        key: object key of the shard.
        block: block index inside the shard.
    """

    def __init__(self, key: str, block: int, *, expected: str, actual: str) -> None:
        self.block = block
        super().__init__(
            f"token shard {key} block {block} failed its checksum (expected {expected}, got {actual})",
            key=key,
            expected=expected,
            actual=actual,
            hint="run `granary verify REF` to list the damaged shards and restore them from a replica",
        )


class StateMismatchError(StreamError, ValueError):
    """A saved loader state does not belong to this dataset version, seed or layout.

    Attributes:
        field: the state field that differs.
        saved: its value in the state dict.
        current: its value in this loader.
    """

    def __init__(self, field: str, saved: object, current: object) -> None:
        self.field = field
        self.saved = saved
        self.current = current
        super().__init__(
            f"the loader state was saved with {field}={saved!r} but this loader has {field}={current!r}",
            hint="resume with the same dataset version, seed, seq_len and shuffle, or start from a fresh state",
        )


class TokenizerMismatchError(StreamError, ValueError):
    """A tokenizer does not fit the data it is used with (vocabulary too large, hash differs)."""
