"""DP-SGD: the accountant's epsilon against the closed form, the budget charged once and refused when spent, and
the epsilon recorded in the checkpoint's lineage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from granary.config import Settings
from granary.train.recipe import Recipe, recipe_from_dict

pytest.importorskip("torch")
pytest.importorskip("opacus")


def _closed_form_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Full-batch Gaussian: RDP(alpha) = steps * alpha / (2 sigma^2), converted as Balle et al. 2020 (what the RDP
    accountant does), minimised over the same orders."""
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
    rdp = steps * orders / (2 * sigma**2)
    eps = rdp + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    return float(np.min(eps))


def test_accountant_epsilon_matches_the_closed_form() -> None:
    from granary.train.dp import epsilon_spent, noise_multiplier

    for sigma, steps in ((1.0, 1), (2.0, 10), (5.0, 100)):
        got = epsilon_spent(noise_multiplier=sigma, delta=1e-5, sample_rate=1.0, steps=steps)
        assert got == pytest.approx(_closed_form_epsilon(sigma, steps, 1e-5), rel=1e-6)
    sigma = noise_multiplier(epsilon=8.0, delta=1e-5, sample_rate=0.01, steps=1000)
    spent = epsilon_spent(noise_multiplier=sigma, delta=1e-5, sample_rate=0.01, steps=1000)
    assert 7.95 <= spent <= 8.0
    assert epsilon_spent(noise_multiplier=sigma * 1.5, delta=1e-5, sample_rate=0.01, steps=1000) < spent




def _recipe(tmp_path: Path, name: str, steps: int = 6) -> Recipe:
    return recipe_from_dict({
        "name": name, "steps": steps, "seed": 1, "run_dir": str(tmp_path / name),
        "model": {"vocab_size": 256, "d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16},
        "data": {"dataset": "tiny-tok", "batch_size": 8}, "optim": {"lr": 0.01},
    })


def _stats(home: Path) -> Any:
    from granary.catalog import open_catalog
    from granary.secure.dp import PrivateStats
    from granary.secure.guard import Guard
    from granary.secure.settings import SecureSettings

    settings = Settings.from_env(home=home)
    return PrivateStats(Guard(open_catalog(settings.catalog_url), SecureSettings.from_env(home)))


def test_dp_sgd_charges_the_budget_and_records_epsilon(home: Path, tmp_path: Path) -> None:
    from granary.secure.errors import BudgetExhaustedError
    from granary.store import open_store
    from granary.train.dp import DPConfig, epsilon_spent, fit_private
    from granary.train.lineage import checkpoint_lineage

    stats = _stats(home)
    stats.set_budget("tiny-tok", epsilon=10.0, delta=1e-4)
    store = open_store(Settings.from_env(home=home))
    result = fit_private(_recipe(tmp_path, "dp"), DPConfig(epsilon=8.0, delta=1e-5, max_grad_norm=1.0), store=store)
    lin = checkpoint_lineage(store, "dp-ckpt")["privacy"]
    assert result.epsilon == pytest.approx(lin["epsilon"]) and lin["epsilon"] <= 8.0
    rate = 8 / store_samples(store)
    assert lin["sample_rate"] == pytest.approx(rate)
    assert lin["epsilon"] == pytest.approx(epsilon_spent(noise_multiplier=lin["noise_multiplier"], delta=1e-5,
                                                         sample_rate=rate, steps=6), rel=1e-6)
    ledger = stats.ledger("tiny-tok")
    assert [(e["mechanism"], e["query"]) for e in ledger] == [("dp-sgd", "dp-sgd:dp")]
    assert ledger[0]["epsilon"] == pytest.approx(lin["charged_epsilon"]) and math.isfinite(result.final_loss)
    # the second run cannot pay: refused before any step, nothing written, nothing charged
    with pytest.raises(BudgetExhaustedError, match="exhausted"):
        fit_private(_recipe(tmp_path, "dp2"), DPConfig(epsilon=8.0), store=store)
    assert len(stats.ledger("tiny-tok")) == 1
    assert [v.id for v in store.versions() if v.dataset == "dp2-ckpt"] == []
    denied = stats.guard.audit.query(action="dp.release")
    assert [r.outcome for r in denied] == ["ok", "denied"]


def store_samples(store: Any) -> int:
    from granary.stream import StreamingDataset

    return StreamingDataset("tiny-tok", batch_size=1, seq_len=17, store=store, rank=0, world_size=1).num_samples


def test_plain_run_is_the_baseline(home: Path, tmp_path: Path) -> None:
    from granary.store import open_store
    from granary.train.dp import fit_private

    store = open_store(Settings.from_env(home=home))
    result = fit_private(_recipe(tmp_path, "plain", steps=4), None, store=store, save=False)
    assert result.epsilon is None and len(result.losses) == 4 and result.checkpoint == ""
    assert _stats(home).ledger("tiny-tok") == []


def test_train_cli_with_dp_epsilon(home: Path, tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from granary.cli.main import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "cli-dp", "steps": 3, "run_dir": str(tmp_path / "cli-dp"),
        "model": {"vocab_size": 256, "d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16},
        "data": {"dataset": "tiny-tok", "batch_size": 8},
    }))
    refused = CliRunner().invoke(app, ["train", str(recipe), "--dp-epsilon", "8"])
    assert refused.exit_code == 1 and "privacy budget of tiny-tok exhausted" in refused.output  # default 1.0
    _stats(home).set_budget("tiny-tok", epsilon=20.0, delta=1e-4)
    ok = CliRunner().invoke(app, ["train", str(recipe), "--dp-epsilon", "8", "--dp-max-grad-norm", "0.5"])
    assert ok.exit_code == 0, ok.output
    assert "epsilon (accountant)" in ok.output and "charged to budget" in ok.output
    bad = CliRunner().invoke(app, ["train", str(recipe), "--dp-epsilon", "8", "--nproc-per-node", "2"])
    assert bad.exit_code == 1 and "in one process" in bad.output
