"""`granary fed`: the CKKS key files, site parsing, submitting the coordinator as a scheduler job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from granary.cli.main import app


def test_keys_writes_a_secret_and_a_public_context(tmp_path: Path) -> None:
    pytest.importorskip("tenseal")
    from granary.secure import he

    result = CliRunner().invoke(app, ["fed", "keys", str(tmp_path / "k"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    secret, public = Path(info["secret"]), Path(info["public"])
    assert secret.stat().st_mode & 0o777 == 0o600
    assert he.load_context(secret.read_bytes()).has_secret_key()
    assert not he.load_context(public.read_bytes()).has_secret_key()


def test_bad_site_and_config_are_clear_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "fed.yaml"
    cfg.write_text("rounds: 1\n")
    result = CliRunner().invoke(app, ["fed", "run", str(cfg), "--site", "nohome", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "NAME=HOME:DATASET" in result.output
    cfg.write_text("rounds: 1\nsecure: mask\naggregation: median\n")
    result = CliRunner().invoke(app, ["fed", "server", str(cfg)])
    assert result.exit_code == 1 and "only the sum" in result.output


def test_server_submits_a_scheduler_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANARY_HOME", str(tmp_path / "home"))
    cfg = tmp_path / "fed.yaml"
    cfg.write_text("name: study\nrounds: 2\n")
    result = CliRunner().invoke(app, ["fed", "server", str(cfg), "--out", str(tmp_path / "out"), "--submit",
                                      "--publish", "study-model", "--json"])
    assert result.exit_code == 0, result.output
    job_id = json.loads(result.output)["job"]
    shown = CliRunner().invoke(app, ["job", job_id, "--json"])
    assert shown.exit_code == 0, shown.output
    job = json.loads(shown.output)
    text = json.dumps(job)
    assert "fed-study" in text and "granary.cli.main" in text and str(cfg.resolve()) in text
    assert '"--publish", "study-model"' in text  # the job commits the model with its lineage
