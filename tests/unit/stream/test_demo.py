"""The demo step: trains a tokenizer on the curated corpus (or the raw one), tokenizes it, streams batches."""

from __future__ import annotations

import pyarrow as pa
import pytest

from granary.errors import StreamError
from granary.store import Store
from granary.stream import demo


def test_demo_falls_back_to_the_raw_corpus_and_streams(tstore: Store) -> None:
    with pytest.raises(StreamError, match="none of the demo datasets"):
        demo.run(tstore)
    tstore.create_dataset("demo", kind="documents")
    texts = [f"Granary demo document {i} about versioned training data." for i in range(150)]
    tstore.commit_table("demo", pa.table({"id": [str(i) for i in range(150)], "text": texts}))
    summary = demo.run(tstore, vocab_size=300, seq_len=32, batches=2)
    assert summary["source"] == "demo" and summary["documents"] == 150
    assert summary["batches"] == [[4, 32], [4, 32]] and summary["resume_at_sample"] == 8
    assert tstore.resolve("demo-tokens").num_tokens == summary["tokens"]
    assert summary["seconds"] < 15
