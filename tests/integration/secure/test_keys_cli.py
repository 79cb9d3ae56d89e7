"""Encrypted data reads back wherever the keyring is, with no extra setting; a lost keyring is an error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("GRANARY_HOME", str(home))
    for var in ("GRANARY_SECURE", "GRANARY_AUTH", "GRANARY_TOKEN", "GRANARY_CATALOG_URL", "GRANARY_STORAGE_URL",
                "GRANARY_ENCRYPT", "GRANARY_KEYRING", "GRANARY_PURPOSE"):
        monkeypatch.delenv(var, raising=False)
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "text": f"private note {i}"}) + "\n" for i in range(50)))
    return home


def _run(*args: str) -> tuple[int, str]:
    from granary.cli.main import app

    result = CliRunner().invoke(app, list(args))
    os.environ.pop("GRANARY_ENCRYPT", None)  # --encrypt sets it for the command's own processes only
    return result.exit_code, result.output


def test_encrypted_ingest_reads_back_without_extra_settings(home: Path, tmp_path: Path) -> None:
    code, out = _run("ingest", str(tmp_path / "in.jsonl"), "-d", "notes", "--encrypt")
    assert code == 0, out
    assert "GRANARY_ENCRYPT" not in os.environ
    code, out = _run("export", "notes", "-o", str(tmp_path / "out.jsonl"))
    assert code == 0, out
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [f"private note {i}" for i in range(50)]
    code, out = _run("diff", "notes", "notes")
    assert code == 0, out
    code, out = _run("verify")
    assert code == 0, out


def test_a_lost_keyring_stops_the_next_encrypted_ingest(home: Path, tmp_path: Path) -> None:
    assert _run("ingest", str(tmp_path / "in.jsonl"), "-d", "notes", "--encrypt")[0] == 0
    keyring = home / "keys" / "keyring.json"
    assert keyring.exists()
    keyring.unlink()
    code, out = _run("ingest", str(tmp_path / "in.jsonl"), "-d", "notes", "--encrypt")
    assert code == 1 and "restore the keyring" in out, out
    assert not keyring.exists() or "master_keys" not in keyring.read_text() or \
        json.loads(keyring.read_text())["master_keys"] == {}
    code, out = _run("export", "notes", "-o", str(tmp_path / "out.jsonl"))
    assert code == 1 and "keyring" in out and "tampered" not in out, out
