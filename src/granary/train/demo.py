"""The training part of ``granary demo``: the reference GPT for a few steps on the demo's tokens, on CPU."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from granary.store import Store

DATASET = "demo-tokens"


def run(store: Store, console: Any = None, *, steps: int = 12, vocab_size: int = 512) -> dict[str, Any]:
    """Train for ``steps`` steps in this process (one rank) with checkpoints in the store; returns a summary."""
    from granary.train.lineage import checkpoint_lineage
    from granary.train.recipe import recipe_from_dict
    from granary.train.trainer import fit

    recipe = recipe_from_dict({
        "name": "demo-gpt", "steps": steps, "seed": 0,
        "run_dir": str(store.settings.home / "train" / "demo-gpt"),
        "model": {"vocab_size": vocab_size, "d_model": 32, "n_layers": 2, "n_heads": 2, "context": 32},
        "data": {"dataset": DATASET, "batch_size": 8, "purpose": "pretraining"},
        "optim": {"lr": 0.01, "warmup_steps": 2},
        "checkpoint": {"every": steps // 2, "resume": False},
        "fault": {"step_timeout_s": 0},
    })
    start = time.perf_counter()
    result = fit(recipe, store=store)
    lineage = checkpoint_lineage(store, recipe.checkpoint_dataset)
    if console is not None:
        console.print(f"trained the reference GPT for {result.steps} steps on {DATASET}; "
                      f"see `granary lineage {recipe.checkpoint_dataset}`")
    return {"steps": result.steps, "final loss": round(result.final_loss or 0.0, 3),
            "checkpoint": f"{recipe.checkpoint_dataset} ({len(result.checkpoints)} versions)",
            "samples trained on": lineage["samples_consumed"], "seconds": round(time.perf_counter() - start, 2)}
