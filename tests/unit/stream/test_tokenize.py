"""Tokenizers and tokenize: EOT appended, lineage records the tokenizer, workers agree, mismatches are caught."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from granary.config import Settings
from granary.errors import StreamError
from granary.store import Store, open_store
from granary.stream import StreamingDataset, TokenizerMismatchError
from granary.stream.tokenize import TokenizeConfig, check_tokenizer, tokenize
from granary.stream.tokenizer import Tokenizer, train_bpe

TEXTS = [f"document {i}: the granary stores {'grain ' * (i % 7)}and streams tokens" for i in range(120)]


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Store, Path]:
    """A documents dataset in 4 shards and a BPE tokenizer trained on it."""
    store = open_store(Settings.from_env(home=tmp_path / "h"))
    store.create_dataset("docs", kind="documents")
    for lo in range(0, len(TEXTS), 40):  # one shard per commit
        part = TEXTS[lo : lo + 40]
        store.commit_table("docs", pa.table({"id": [str(lo + i) for i in range(len(part))], "text": part}))
    assert len(store.manifest("docs").shards) >= 3
    return store, train_bpe(TEXTS, vocab_size=300, output=tmp_path / "tok" / "tokenizer.json")


@pytest.mark.parametrize("workers", [1, 2])
def test_tokenize_appends_eot_and_records_the_tokenizer(corpus: tuple[Store, Path], workers: int) -> None:
    store, path = corpus
    report = tokenize(store, "docs", TokenizeConfig(tokenizer=str(path), output="toks", workers=workers, seq_len=16))
    tok = Tokenizer(path)
    expected = np.concatenate(tok.encode_batch(TEXTS))
    assert report.documents == len(TEXTS) and report.tokens == len(expected) and report.resumed_shards == 0
    assert report.samples == len(expected) // 16 and report.tokens_per_doc["max"] >= report.tokens_per_doc["p50"]
    ds = StreamingDataset("toks", batch_size=report.samples or 1, seq_len=16, store=store, shuffle=False,
                          output="numpy", token_dtype="native")
    got = next(iter(ds))["tokens"].ravel()
    assert np.array_equal(got, expected[: len(got)])
    assert (expected == tok.eot_id).sum() == len(TEXTS)
    manifest = store.manifest("toks")
    assert manifest.lineage["params"]["tokenizer"]["sha256"] == tok.info.sha256
    assert manifest.lineage["inputs"] == [store.resolve("docs").id]
    check_tokenizer(store, "toks", path)


def test_a_different_tokenizer_is_a_mismatch(corpus: tuple[Store, Path], tmp_path: Path) -> None:
    store, path = corpus
    tokenize(store, "docs", TokenizeConfig(tokenizer=str(path), output="toks"))
    other = train_bpe(TEXTS[:50], vocab_size=280, output=tmp_path / "other.json")
    with pytest.raises(TokenizerMismatchError, match="was tokenized with a tokenizer of sha256"):
        check_tokenizer(store, "toks", other)


def test_tiktoken_rank_files_load_from_a_local_path(tmp_path: Path) -> None:
    ranks = [bytes([b]) for b in range(256)] + [b"gr", b"an", b"gran"]
    path = tmp_path / "tiny.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))
    tok = Tokenizer(path)
    ids = tok.encode_batch(["granary"])[0]
    assert tok.info.kind == "tiktoken" and tok.eot_id == 259 and ids[-1] == 259
    assert tok.decode(ids[:-1].tolist()) == "granary" and 258 in ids.tolist()


def test_bad_inputs_are_clear_errors(corpus: tuple[Store, Path], tmp_path: Path) -> None:
    store, path = corpus
    with pytest.raises(StreamError, match="does not exist"):
        Tokenizer(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(StreamError, match=r"not a valid tokenizer\.json"):
        Tokenizer(tmp_path / "junk.json")
    tokenize(store, "docs", TokenizeConfig(tokenizer=str(path), output="toks"))
    with pytest.raises(StreamError, match="is a tokens version"):
        tokenize(store, "toks", TokenizeConfig(tokenizer=str(path), output="again"))
    with pytest.raises(StreamError, match="output dataset docs is a documents dataset"):
        tokenize(store, "docs", TokenizeConfig(tokenizer=str(path), output="docs"))
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(TEXTS, vocab_size=10, output=tmp_path / "x.json")
