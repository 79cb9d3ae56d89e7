"""The loader's resume state: a position in the global sample stream plus what it is a position of."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from granary.errors import StreamError
from granary.stream.errors import StateMismatchError

STATE_FORMAT = "granary.stream.state/1"
# Fields that must match for a state to be valid in a loader; the rest (batch, world size) may change.
_IDENTITY = ("versions", "weights", "seed", "shuffle", "seq_len", "num_samples")


@dataclass(kw_only=True, frozen=True)
class StreamState:
    """Everything needed to resume a stream exactly.

    Attributes:
        versions: version id of each source (one unless mixing).
        weights: mixing weights (``[1.0]`` for one source).
        seed: shuffle seed.
        shuffle: shuffle name from the registry.
        seq_len: tokens per sample (None for records).
        num_samples: samples per epoch of each source.
        position: global samples consumed (over all ranks) since epoch 0 began.
        global_batch: samples per global step when saved (informative; resuming may change it).
        world_size: ranks when saved (informative; resuming may change it).
    """

    versions: list[str]
    weights: list[float]
    seed: int
    shuffle: str
    seq_len: int | None
    num_samples: list[int]
    position: int = 0
    global_batch: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.position < 0:
            raise ValueError(f"position must be >= 0, got {self.position}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what ``state_dict()`` returns)."""
        return {"format": STATE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamState:
        """Parse a state dict; raise StreamError naming what is wrong."""
        if data.get("format") != STATE_FORMAT:
            raise StreamError(f"not a granary stream state (format {data.get('format')!r}, want {STATE_FORMAT!r})",
                              hint="pass the dict returned by StreamingDataset/StreamingLoader.state_dict()")
        fields = {k: v for k, v in data.items() if k != "format"}
        try:
            return cls(**fields)
        except TypeError as exc:
            raise StreamError(f"malformed stream state: {exc}") from None

    def check_matches(self, current: StreamState) -> None:
        """Raise StateMismatchError if this saved state does not belong to ``current``'s stream."""
        for name in _IDENTITY:
            saved, now = getattr(self, name), getattr(current, name)
            if saved != now:
                raise StateMismatchError(name, saved, now)
