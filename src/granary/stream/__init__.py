"""Tokenization and the streaming loader: from a dataset version to training batches, exact on resume.

Importing this package does not import torch; batches become torch tensors only when asked for.
"""

from __future__ import annotations

from granary.stream.dataset import StreamingDataset
from granary.stream.errors import CorruptBlockError, StateMismatchError, TokenizerMismatchError
from granary.stream.loader import StreamingLoader
from granary.stream.mix import Mix
from granary.stream.shuffle import SHUFFLES, make_order
from granary.stream.state import StreamState

__all__ = [
    "SHUFFLES",
    "CorruptBlockError",
    "Mix",
    "StateMismatchError",
    "StreamState",
    "StreamingDataset",
    "StreamingLoader",
    "TokenizerMismatchError",
    "make_order",
]
