"""A tiny trained reference GPT in a store shared by the module's tests (training takes a few seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors", reason="the registry writes safetensors (pip install 'granary[models]')")


@dataclass
class Trained:
    home: Path
    checkpoint: str
    data: str
    heldout: str

    def store(self) -> Any:
        from granary.config import Settings
        from granary.store import open_store

        return open_store(Settings.from_env(home=self.home))


def make_tokens(store: Any, name: str, *, docs: int, seed: int) -> str:
    store.create_dataset(name, kind="tokens", exist_ok=True)
    rng = np.random.default_rng(seed)
    with store.transaction(name) as txn:
        # a learnable stream: each document counts up from a random start, modulo the vocabulary
        txn.write_tokens((((rng.integers(0, 64) + np.arange(rng.integers(20, 80))) % 64).astype(np.uint16)
                          for _ in range(docs)), shard_tokens=2000)
        txn.commit(message=f"{name} tokens")
    return name


def train(home: Path, name: str = "tiny", *, steps: int = 30) -> Trained:
    from granary.config import Settings
    from granary.store import open_store
    from granary.train.recipe import recipe_from_dict
    from granary.train.trainer import fit

    store = open_store(Settings.from_env(home=home))
    make_tokens(store, "tiny-tok", docs=150, seed=0)
    make_tokens(store, "tiny-heldout", docs=60, seed=1)
    recipe = recipe_from_dict({
        "name": name, "steps": steps, "seed": 0, "run_dir": str(home / "train" / name),
        "model": {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "context": 16},
        "data": {"dataset": "tiny-tok", "batch_size": 8, "purpose": "pretraining"},
        "optim": {"lr": 0.01, "warmup_steps": 2},
        "checkpoint": {"every": steps, "resume": False}, "fault": {"step_timeout_s": 0},
    })
    fit(recipe, store=store)
    return Trained(home=home, checkpoint=recipe.checkpoint_dataset, data="tiny-tok", heldout="tiny-heldout")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    home = tmp_path_factory.mktemp("models-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("GRANARY_HOME", str(home))
    try:
        return train(home)
    finally:
        mp.undo()
