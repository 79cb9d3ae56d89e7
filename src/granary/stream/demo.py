"""The streaming part of ``granary demo``: train a tokenizer, tokenize the corpus, stream a few batches."""

from __future__ import annotations

import time
from typing import Any

from granary.errors import NotFoundError, StreamError
from granary.store import Store
from granary.stream.dataset import StreamingDataset
from granary.stream.tokenize import TokenizeConfig, tokenize
from granary.stream.tokenizer import train_bpe

SOURCES = ("demo-curated", "demo")
OUTPUT = "demo-tokens"


def _source(store: Store) -> str:
    for name in SOURCES:
        try:
            store.resolve(name)
            return name
        except NotFoundError:
            continue
    raise StreamError(f"none of the demo datasets {list(SOURCES)} exists", hint="run `granary demo` from the start")


def run(store: Store, console: Any = None, *, vocab_size: int = 512, seq_len: int = 128,
        batches: int = 3) -> dict[str, Any]:
    """Train a BPE tokenizer on the curated demo corpus, tokenize it to ``demo-tokens``, stream batches.

    Args:
        store: the demo's store.
        console: a rich console for progress lines (None: silent).
        vocab_size, seq_len, batches: demo sizes (kept small: the whole step takes a few seconds).

    Returns:
        A summary: tokenizer path, tokens version, documents, tokens, samples, batches streamed and timings.
    """
    t0 = time.perf_counter()
    source = _source(store)
    path = store.settings.home / "demo" / "tokenizer.json"
    texts = (t or "" for b in store.iter_batches(source, columns=["text"]) for t in b.column(0).to_pylist())
    train_bpe(texts, vocab_size=vocab_size, output=path)
    if console is not None:
        console.print(f"trained a {vocab_size}-token BPE tokenizer on {source} -> {path}")
    report = tokenize(store, source, TokenizeConfig(tokenizer=str(path), output=OUTPUT, seq_len=seq_len))
    if console is not None:
        console.print(f"tokenized {report.documents} documents into {report.version.ref}: {report.tokens} tokens")
    ds = StreamingDataset(OUTPUT, batch_size=4, seq_len=min(seq_len, max(1, report.tokens // 8)), seed=0,
                          store=store, output="numpy", segment_ids=True, num_threads=0, rank=0, world_size=1)
    shapes = []
    for i, batch in enumerate(ds):
        shapes.append(list(batch["tokens"].shape))
        if i + 1 >= batches:
            break
    summary = {"source": source, "tokenizer": str(path), "tokens_version": report.version.ref,
               "documents": report.documents, "tokens": report.tokens, "samples_per_epoch": ds.num_samples,
               "batches": shapes, "resume_at_sample": ds.state_dict()["position"],
               "seconds": round(time.perf_counter() - t0, 2)}
    if console is not None:
        console.print(f"streamed {len(shapes)} batches of {shapes[0] if shapes else '-'} tokens")
    return summary
