"""The CLI over the registry: register, list, show, alias (refusals are clear errors), card, eval, compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.unit.models.conftest import Trained


@pytest.fixture
def cli(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("GRANARY_HOME", str(trained.home))
    return CliRunner()


def run(cli: CliRunner, *args: str) -> str:
    from granary.cli.main import app

    result = cli.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_register_show_alias_card_eval_compare(cli: CliRunner, trained: Trained, tmp_path: Path) -> None:
    from granary.cli.main import app

    mv = json.loads(run(cli, "model", "register", trained.checkpoint, "--name", "clim", "--json"))
    assert (mv["name"], mv["version"], mv["method"]) == ("clim", 1, "registered")
    listed = json.loads(run(cli, "model", "list", "clim", "--json"))
    assert [v["version"] for v in listed] == [1]
    out = json.loads(run(cli, "eval", "clim", "--data", trained.heldout, "--inline", "--shards", "2",
                         "--metrics", "perplexity", "--json"))
    assert set(out["metrics"]) == {"perplexity", "tokens"} and out["computed"] == 2
    assert json.loads(run(cli, "model", "alias", "clim@1", "production", "--json"))["version"] == 1
    shown = json.loads(run(cli, "model", "show", "clim@production", "--json"))
    assert shown["aliases"] == ["production"] and len(shown["evaluations"]) == 1
    assert shown["lineage"]["roots"] == [trained.store().resolve(trained.data).id]
    table = run(cli, "model", "show", "clim")
    assert "lineage" in table and trained.data in table
    card = tmp_path / "card.html"
    run(cli, "model", "card", "clim@1", "--format", "html", "-o", str(card))
    assert "<h1>Model card: clim@1</h1>" in card.read_text()
    rows = json.loads(run(cli, "model", "compare", "clim@1", "--data", trained.heldout, "--json"))
    assert rows[0]["metrics"]["perplexity"] == out["metrics"]["perplexity"]
    bad = cli.invoke(app, ["eval", "clim", "--data", trained.heldout, "--metrics", "bleu"])
    assert bad.exit_code != 0 and "unknown metric" in bad.output
    missing = cli.invoke(app, ["model", "show", "nope"])
    assert missing.exit_code != 0 and "model nope does not exist" in missing.output
