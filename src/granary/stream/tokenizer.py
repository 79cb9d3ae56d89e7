"""Tokenizers from local files (Hugging Face ``tokenizer.json`` or tiktoken BPE ranks) and BPE training."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from granary.errors import MissingDependencyError, StreamError

log = logging.getLogger(__name__)

EOT_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eot_id|>", "[SEP]")
# The cl100k split pattern, used for tiktoken rank files (they carry no pattern of their own).
TIKTOKEN_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)


@dataclass(kw_only=True, frozen=True)
class TokenizerInfo:
    """What identifies a tokenizer in a version's lineage.

    Attributes:
        path: the file it was loaded from.
        sha256: SHA-256 of the file's bytes (what a mismatch check compares).
        kind: ``hf`` (tokenizers JSON) or ``tiktoken`` (BPE ranks file).
        vocab_size: number of token ids.
        eot_id: id appended at the end of every document.
    """

    path: str
    sha256: str
    kind: Literal["hf", "tiktoken"]
    vocab_size: int
    eot_id: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (stored in lineage and metadata)."""
        return {"path": self.path, "sha256": self.sha256, "kind": self.kind, "vocab_size": self.vocab_size,
                "eot_id": self.eot_id}

    @property
    def dtype(self) -> str:
        """Smallest token dtype that holds every id."""
        return "uint16" if self.vocab_size <= 65536 else "uint32"


class Tokenizer:
    """A loaded tokenizer: ``encode_batch`` returns one uint array per text, each ending with the EOT id.

    Args:
        path: a ``tokenizer.json`` (Hugging Face ``tokenizers``) or a tiktoken ``.tiktoken`` rank file.
        eot_token: the end-of-document token (default: the first of ``EOT_CANDIDATES`` the tokenizer knows).
    """

    def __init__(self, path: str | Path, *, eot_token: str | None = None) -> None:
        p = Path(path)
        if not p.is_file():
            raise StreamError(f"tokenizer file {p} does not exist",
                              hint="train one with: granary tokenizer train REF --vocab-size N -o PATH")
        raw = p.read_bytes()
        self._impl: Any
        if raw.lstrip()[:1] == b"{":
            self._load_hf(p, eot_token)
        else:
            self._load_tiktoken(p, eot_token)
        self.info = TokenizerInfo(path=str(p), sha256=hashlib.sha256(raw).hexdigest(), kind=self._kind,
                                  vocab_size=self._vocab, eot_id=self._eot)

    def _load_hf(self, p: Path, eot_token: str | None) -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise MissingDependencyError("tokenizers", "tokenize") from None
        try:
            self._impl = HFTokenizer.from_file(str(p))
        except Exception as exc:  # the library raises a bare Exception on malformed JSON
            raise StreamError(f"{p} is not a valid tokenizer.json: {exc}") from None
        self._kind: Literal["hf", "tiktoken"] = "hf"
        self._vocab = int(self._impl.get_vocab_size(with_added_tokens=True))
        self._eot = self._find_eot(p, eot_token, self._impl.token_to_id)

    def _load_tiktoken(self, p: Path, eot_token: str | None) -> None:
        try:
            import tiktoken
            from tiktoken.load import load_tiktoken_bpe
        except ImportError:
            raise MissingDependencyError("tiktoken", "tokenize") from None
        try:
            ranks = load_tiktoken_bpe(str(p))
        except (ValueError, IndexError) as exc:
            raise StreamError(f"{p} is neither a tokenizer.json nor a tiktoken rank file: {exc}") from None
        name = eot_token or "<|endoftext|>"
        self._impl = tiktoken.Encoding(p.stem, pat_str=TIKTOKEN_PATTERN, mergeable_ranks=ranks,
                                       special_tokens={name: len(ranks)})
        self._kind = "tiktoken"
        self._vocab = len(ranks) + 1
        self._eot = len(ranks)

    @staticmethod
    def _find_eot(p: Path, eot_token: str | None, lookup: Any) -> int:
        for name in (eot_token,) if eot_token else EOT_CANDIDATES:
            token_id = lookup(name)
            if token_id is not None:
                return int(token_id)
        raise StreamError(f"tokenizer {p} has no end-of-document token (tried {list(EOT_CANDIDATES)})",
                          hint="pass eot_token= (CLI: --eot-token) naming one of its special tokens")

    @property
    def eot_id(self) -> int:
        """The end-of-document token id."""
        return self._eot

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token arrays (dtype ``info.dtype``), each with the EOT id appended."""
        if self._kind == "hf":
            ids = [e.ids for e in self._impl.encode_batch(list(texts), add_special_tokens=False)]
        else:
            ids = self._impl.encode_ordinary_batch(list(texts), num_threads=1)
        dtype = np.dtype(self.info.dtype)
        return [np.array([*x, self._eot], dtype=dtype) for x in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a token sequence (special tokens shown)."""
        if self._kind == "hf":
            return str(self._impl.decode(list(ids), skip_special_tokens=False))
        return str(self._impl.decode(list(ids)))


def train_bpe(texts: Iterable[str], *, vocab_size: int, output: str | Path, min_frequency: int = 2) -> Path:
    """Train a byte-level BPE tokenizer and save it as ``tokenizer.json`` (works offline).

    Args:
        texts: training texts (streamed).
        vocab_size: target vocabulary size, including 256 byte tokens and ``<|endoftext|>``.
        output: path of the JSON file to write (parent directories are created).
        min_frequency: minimum pair count for a merge.
    """
    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (256 bytes + specials), got {vocab_size}")
    try:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise MissingDependencyError("tokenizers", "tokenize") from None
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tok.save(str(tmp))
    tmp.replace(out)
    log.info("trained a %d-token BPE tokenizer into %s", tok.get_vocab_size(), out)
    return out
