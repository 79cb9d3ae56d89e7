"""Tokenize a documents version into a tokens version: parallel over shards, resumable, recorded in lineage."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from granary.config import Settings
from granary.errors import NotFoundError, StreamError
from granary.store import ShardEntry, Store, VersionInfo, open_store
from granary.stream.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class TokenizeConfig:
    """How to tokenize.

    Attributes:
        tokenizer: path of a ``tokenizer.json`` or tiktoken rank file.
        output: name of the tokens dataset to write (created if missing; each run overwrites its branch).
        seq_len: training sequence length to report samples for (recorded in metadata; packing is at read time).
        workers: processes, one documents shard at a time each.
        batch_rows: texts encoded per call.
        text_column: column holding the text.
        eot_token: end-of-document token name (default: found in the tokenizer).
    """

    tokenizer: str
    output: str
    seq_len: int | None = None
    workers: int = 1
    batch_rows: int = 1024
    text_column: str = "text"
    eot_token: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1 or self.batch_rows < 1:
            raise ValueError(f"workers and batch_rows must be >= 1, got {self.workers}, {self.batch_rows}")
        if self.seq_len is not None and self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}")


@dataclass
class TokenizeReport:
    """What a tokenize run produced."""

    version: VersionInfo
    documents: int
    tokens: int
    shards: int
    resumed_shards: int
    tokens_per_doc: dict[str, float] = field(default_factory=dict)
    samples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        out = {k: v for k, v in asdict(self).items() if k != "version"}
        out["version"] = self.version.ref
        return out


def tokenize(store: Store, ref: str, config: TokenizeConfig,
             on_shard: Callable[[int], None] | None = None) -> TokenizeReport:
    """Tokenize ``ref`` into ``config.output``; a killed run resumes from its journal when run again.

    Args:
        store: the store.
        ref: a documents version.
        config: tokenizer, output and parallelism.
        on_shard: called with the number of documents of each finished shard (progress bars).
    """
    tok = Tokenizer(config.tokenizer, eot_token=config.eot_token)
    source = store.resolve(ref)
    manifest = store.open_version(source)
    if manifest.kind != "documents":
        raise StreamError(f"{ref} is a {manifest.kind} version; tokenize takes a documents version")
    _ensure_output(store, config.output)
    journal = _Journal(store.settings.home / "stream" / "tokenize" / f"{config.output}-{source.id[:16]}"
                       f"-{tok.info.sha256[:16]}.json")
    done = journal.load(store)
    resumed = len(done)
    todo = [i for i in range(len(manifest.shards)) if i not in done]
    for i in done:
        if on_shard:
            on_shard(int(done[i][1]["docs"]))
    _run_shards(store.settings, config, list(manifest.shards), todo, done, journal, on_shard)
    entries = [done[i][0] for i in range(len(manifest.shards))]
    lengths = np.concatenate([np.asarray(done[i][1]["lengths"], dtype=np.int64) for i in sorted(done)]
                             or [np.empty(0, dtype=np.int64)])
    version = _commit(store, ref, source, config, tok, entries, lengths)
    journal.remove()
    return _report(version, entries, lengths, resumed, config.seq_len)


def _ensure_output(store: Store, name: str) -> None:
    try:
        info = store.dataset(name)
    except NotFoundError:
        store.create_dataset(name, kind="tokens", description="tokenized by granary tokenize")
        return
    if info.kind != "tokens":
        raise StreamError(f"output dataset {name} is a {info.kind} dataset", hint="choose another --output name")


def _run_shards(settings: Settings, config: TokenizeConfig, shards: list[ShardEntry], todo: list[int],
                done: dict[int, tuple[ShardEntry, dict[str, Any]]], journal: _Journal,
                on_shard: Callable[[int], None] | None) -> None:
    def record(i: int, entry: ShardEntry, facts: dict[str, Any]) -> None:
        done[i] = (entry, facts)
        journal.save(done)
        if on_shard:
            on_shard(int(facts["docs"]))

    if config.workers == 1 or len(todo) <= 1:
        for i in todo:
            record(i, *_tokenize_shard(settings, config, shards[i]))
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with ProcessPoolExecutor(max_workers=min(config.workers, len(todo))) as pool:
        futures = {pool.submit(_tokenize_shard, settings, config, shards[i]): i for i in todo}
        for fut in as_completed(futures):
            record(futures[fut], *fut.result())


def _tokenize_shard(settings: Settings, config: TokenizeConfig,
                    entry: ShardEntry) -> tuple[ShardEntry, dict[str, Any]]:
    """Worker: read one documents shard, encode it, publish one token shard (invisible until committed)."""
    store = open_store(settings)
    tok = Tokenizer(config.tokenizer, eot_token=config.eot_token)
    table = store.read_shard(entry, columns=[config.text_column])
    texts = table.column(config.text_column).to_pylist()
    docs: list[np.ndarray] = []
    for lo in range(0, len(texts), config.batch_rows):
        docs.extend(tok.encode_batch([t or "" for t in texts[lo : lo + config.batch_rows]]))
    out = store.write_token_shard(config.output, docs, dtype=tok.info.dtype)
    return out, {"docs": len(docs), "lengths": [len(d) for d in docs]}


def _commit(store: Store, ref: str, source: VersionInfo, config: TokenizeConfig, tok: Tokenizer,
            entries: list[ShardEntry], lengths: np.ndarray) -> VersionInfo:
    params = {"tokenizer": tok.info.to_dict(), "seq_len": config.seq_len, "text_column": config.text_column}
    with store.transaction(config.output, mode="overwrite") as txn:
        txn.add_shards(entries)
        return txn.commit(
            message=f"tokenize {source.ref} with {Path(config.tokenizer).name}",
            lineage={"command": "tokenize", "inputs": [source.id], "source": ref, "params": params},
            metadata={"tokenizer": tok.info.to_dict(), "seq_len": config.seq_len, "eot_id": tok.eot_id,
                      "documents": len(lengths)},
            allow_empty=False,  # a finished run repeated returns the existing head
        )


def _report(version: VersionInfo, entries: list[ShardEntry], lengths: np.ndarray, resumed: int,
            seq_len: int | None) -> TokenizeReport:
    total = int(lengths.sum()) if len(lengths) else 0
    stats = {} if not len(lengths) else {
        "mean": float(lengths.mean()), "min": float(lengths.min()), "p50": float(np.percentile(lengths, 50)),
        "p90": float(np.percentile(lengths, 90)), "p99": float(np.percentile(lengths, 99)),
        "max": float(lengths.max())}
    return TokenizeReport(version=version, documents=len(lengths), tokens=total, shards=len(entries),
                          resumed_shards=resumed, tokens_per_doc=stats,
                          samples=None if not seq_len else total // seq_len)


def check_tokenizer(store: Store, ref: str, tokenizer: str | Path) -> None:
    """Raise TokenizerMismatchError unless ``ref`` was tokenized with exactly this tokenizer file."""
    from granary.stream.errors import TokenizerMismatchError

    recorded = (store.manifest(ref).metadata.get("tokenizer") or {}).get("sha256")
    mine = Tokenizer(tokenizer).info.sha256
    if recorded != mine:
        raise TokenizerMismatchError(
            f"{ref} was tokenized with a tokenizer of sha256 {str(recorded)[:16]}..., not {tokenizer} "
            f"(sha256 {mine[:16]}...)", hint="use the tokenizer recorded in `granary show REF`, or re-tokenize")


class _Journal:
    """Finished shards of a tokenize run, rewritten atomically after each shard (so a killed run resumes)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, store: Store) -> dict[int, tuple[ShardEntry, dict[str, Any]]]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
        except json.JSONDecodeError:
            log.warning("ignoring unreadable tokenize journal %s", self.path)
            return {}
        done = {}
        for key, (entry, facts) in raw.items():
            shard = ShardEntry(**entry)
            if store.objects.exists(shard.key):  # a shard collected by gc since is simply redone
                done[int(key)] = (shard, facts)
        log.info("resuming tokenize: %d shards already done (%s)", len(done), self.path)
        return done

    def save(self, done: dict[int, tuple[ShardEntry, dict[str, Any]]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(i): [asdict(e), f] for i, (e, f) in done.items()}))
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
