"""Shared pieces of the training tests: a tiny tokens version, recipes, running `granary train`, reading results."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from granary.config import Settings
from granary.store import open_store


def make_tokens(home: Path, name: str = "tiny-tok", *, docs: int = 120, seed: int = 0) -> str:
    store = open_store(Settings.from_env(home=home))
    store.create_dataset(name, kind="tokens")
    rng = np.random.default_rng(seed)
    with store.transaction(name) as txn:
        # a learnable stream: each document counts up from a random start, modulo the vocabulary
        txn.write_tokens((((rng.integers(0, 256) + np.arange(rng.integers(20, 80))) % 256).astype(np.uint16)
                          for _ in range(docs)), shard_tokens=2000)
        txn.commit(message="tiny tokens")
    return name


def write_recipe(path: Path, name: str, *, steps: int = 12, every: int = 4, run_dir: Path | None = None,
                 **sections: dict[str, Any]) -> Path:
    recipe: dict[str, Any] = {
        "name": name, "steps": steps, "seed": 3, "run_dir": str(run_dir or path.parent / name),
        "model": {"vocab_size": 256, "d_model": 16, "n_layers": 2, "n_heads": 2, "context": 16},
        "data": {"dataset": "tiny-tok", "batch_size": 4, "seed": 5},
        "optim": {"lr": 0.01, "warmup_steps": 2},
        "checkpoint": {"every": every},
        "fault": {"step_timeout_s": 120},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_train(home: Path, target: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``granary train`` in its own session; on a timeout the whole process group (agent and every rank) is
    killed, so no rank outlives the test, and the error shows what it printed."""
    full_env = {**os.environ, "GRANARY_HOME": str(home), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "granary.cli.main", "train", str(target), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"granary train did not finish in {timeout} s:\n{out}\n{(err or '')[-8000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def check(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"granary train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}"


def losses(run_dir: Path) -> tuple[dict[int, float], list[tuple[int, float, int]]]:
    """(last loss logged per step, every (step, loss, attempt) record in order)."""
    from granary.train.metrics import read_metrics

    records = [r for r in read_metrics(run_dir) if "loss" in r]
    return {r["step"]: r["loss"] for r in records}, [(r["step"], r["loss"], r["attempt"]) for r in records]


def final_state(home: Path, dataset: str) -> dict[str, Any]:
    """The newest checkpoint of ``dataset`` as a plain dict of tensors (read through the store)."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    store = open_store(Settings.from_env(home=home))
    manifest = store.open_version(dataset)
    with tempfile.TemporaryDirectory() as tmp:
        for entry in manifest.shards:
            (Path(tmp) / entry.meta["name"]).write_bytes(store.object_bytes(entry))
        out = Path(tmp) / "all.pt"
        dcp_to_torch_save(tmp, out)
        state = torch.load(io.BytesIO(out.read_bytes()), weights_only=False)
    return {"step": manifest.metadata["step"], "model": state["model"], "optim": state["optim"],
            "scaler": state.get("scaler"),
            "metadata": manifest.metadata, "lineage": manifest.lineage, "version": manifest.version_id}
