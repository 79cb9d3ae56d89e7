"""The stream commands through the real CLI app: tokenizer train, tokenize, peek, stream-bench, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from typer.testing import CliRunner

from granary.cli.main import app
from granary.store import open_store

runner = CliRunner()


def test_train_tokenize_peek_and_bench(tmp_path: Path) -> None:
    store = open_store()  # GRANARY_HOME points into tmp_path (tests/conftest.py)
    store.create_dataset("docs", kind="documents")
    texts = [f"line {i}: streaming tokens from a granary" for i in range(80)]
    store.commit_table("docs", pa.table({"id": [str(i) for i in range(80)], "text": texts}))
    tok = tmp_path / "tok.json"
    result = runner.invoke(app, ["tokenizer", "train", "docs", "--vocab-size", "300", "-o", str(tok)])
    assert result.exit_code == 0, result.output
    assert tok.exists() and "Tokenizer trained" in result.output
    result = runner.invoke(app, ["tokenize", "docs", "--tokenizer", str(tok), "--output", "toks", "--seq-len", "16",
                                 "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["documents"] == 80 and report["samples"] == report["tokens"] // 16
    result = runner.invoke(app, ["peek", "toks", "--seq-len", "16", "-n", "2", "--tokenizer", str(tok), "--json"])
    assert result.exit_code == 0, result.output
    peeked = json.loads(result.output)
    assert peeked["kind"] == "tokens" and peeked["samples"][0]["text"].startswith("line 0:")
    result = runner.invoke(app, ["peek", "docs", "-n", "1", "--json"])
    assert json.loads(result.output)["samples"][0]["id"] == "0"
    result = runner.invoke(app, ["stream-bench", "--samples", "1024", "--seq-len", "256", "--json"])
    assert result.exit_code == 0, result.output
    bench = json.loads(result.output)
    assert bench["loader"]["samples"] == 1024 and bench["loader"]["shards_per_batch"] > 10


def test_user_errors_are_short_messages(tmp_path: Path) -> None:
    result = runner.invoke(app, ["peek", "missing"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    result = runner.invoke(app, ["tokenize", "missing", "--tokenizer", str(tmp_path / "nope.json"), "-o", "x"])
    assert result.exit_code == 1 and "does not exist" in result.output and "hint" in result.output
