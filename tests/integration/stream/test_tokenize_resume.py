"""A tokenize run killed with SIGKILL resumes from its journal and commits exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from granary.config import Settings
from granary.errors import NotFoundError
from granary.store import open_store
from granary.stream import StreamingDataset
from granary.stream.tokenize import TokenizeConfig, tokenize
from granary.stream.tokenizer import Tokenizer, train_bpe


def _texts(n: int) -> list[str]:
    return [f"record {i} of the granary corpus, {'with more words ' * (i % 11)}end" for i in range(n)]


@pytest.mark.slow
def test_sigkilled_tokenize_resumes_to_the_same_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = open_store(Settings.from_env(home=home))
    store.create_dataset("docs", kind="documents")
    texts = _texts(24 * 300)
    for lo in range(0, len(texts), 300):  # 24 shards, one per commit
        part = texts[lo : lo + 300]
        store.commit_table("docs", pa.table({"id": [str(lo + i) for i in range(len(part))], "text": part}))
    tok_path = train_bpe(texts[:500], vocab_size=300, output=tmp_path / "tokenizer.json")
    env = {**os.environ, "GRANARY_HOME": str(home)}
    journal_dir = home / "stream" / "tokenize"
    proc = subprocess.Popen([sys.executable, "-m", "granary.cli.main", "tokenize", "docs", "--tokenizer",
                             str(tok_path), "--output", "toks", "--json"], env=env,
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "tokenize.err").open("wb"))
    deadline = time.monotonic() + 180  # only bounds a hang (a loaded machine starts the child slowly)
    done_before_kill = 0
    while time.monotonic() < deadline and proc.poll() is None:
        files = list(journal_dir.glob("*.json")) if journal_dir.exists() else []
        if files:
            try:
                done_before_kill = len(json.loads(files[0].read_text()))
            except (json.JSONDecodeError, FileNotFoundError):
                done_before_kill = 0
            if done_before_kill >= 2:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    proc.wait(timeout=30)
    if proc.returncode == 0:
        pytest.fail("tokenize finished before it could be killed; make the corpus larger")
    assert done_before_kill >= 2, (f"tokenize exited with {proc.returncode} before two shards were journaled:\n"
                                   f"{(tmp_path / 'tokenize.err').read_text(errors='replace')[-6000:]}")
    with pytest.raises(NotFoundError, match="no commits yet"):  # nothing was committed by the killed run
        store.resolve("toks")
    report = tokenize(store, "docs", TokenizeConfig(tokenizer=str(tok_path), output="toks"))
    assert report.resumed_shards >= 2 and report.documents == len(texts)
    expected = np.concatenate(Tokenizer(tok_path).encode_batch(texts))
    ds = StreamingDataset("toks", batch_size=1, seq_len=len(expected), store=store, shuffle=False,
                          output="numpy", token_dtype="native")
    assert np.array_equal(next(iter(ds))["tokens"][0], expected)
    assert not list(journal_dir.glob("*.json"))  # the journal is removed after the commit
