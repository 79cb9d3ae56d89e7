"""The interface every message source implements, and the micro-batch it hands the ingester."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa


@dataclass
class Polled:
    """Messages read from a source in one poll.

    Attributes:
        payloads: message bodies, in source order.
        positions: each message's position (stream id, sequence, offset) as strings, same order.
        last: the position to record once these messages are committed.
        ack_token: what the source needs to acknowledge them: one item per message (opaque to the ingester).
    """

    payloads: list[bytes]
    positions: pa.Array  # of strings: built from bytes in one call, not one Python str per message
    last: str
    ack_token: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.payloads)


class MessageSource(Protocol):
    """A stream of messages with positions that can be resumed after a committed position."""

    url: str  # identity recorded with the offsets: scheme, server, stream, group

    def start(self, position: str | None) -> None:
        """Connect and arrange that the next poll returns the first message after ``position`` (None: the first)."""

    def poll(self, max_records: int, timeout_s: float) -> Polled | None:
        """Up to ``max_records`` messages, waiting at most ``timeout_s`` for the first; None when there are none."""

    def ack(self, polled: Polled) -> None:
        """Acknowledge messages whose rows are committed (never called before the commit)."""

    def lag(self) -> int | None:
        """Messages in the source not yet delivered to this ingester, when the source can tell."""

    def close(self) -> None:
        """Disconnect."""


def position_key(position: str) -> tuple[int, ...]:
    """Order positions of the form ``123`` or ``1700000000000-5`` numerically."""
    return tuple(int(p) for p in position.split("-"))
