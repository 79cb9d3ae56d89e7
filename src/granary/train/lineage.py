"""Lineage from data to every step: what a checkpoint was trained on, down to the sample ids of each step.

A checkpoint's lineage (in its store version) names the data version(s), mixing weights, seed, shuffle and
sample length, the code's hash and the recipe, and a list of *segments*: runs of consecutive steps of one attempt
with the global stream position where each began and the samples each step consumed. The stream order is a pure
function of (versions, weights, seed, shuffle), so the sample ids of any step can be recomputed from it
(:func:`sample_ids`), also across restarts at another world size.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from granary.errors import TrainError

if TYPE_CHECKING:
    from granary.store import Store
    from granary.train.recipe import Recipe


@lru_cache(maxsize=1)
def code_hash() -> str:
    """SHA-256 over the sources of ``granary.train`` (what trained the model)."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def run_lineage(recipe: Recipe, *, pinned: str, loader: dict[str, Any], segments: list[dict[str, Any]],
                start_step: int, start_position: int, step: int) -> dict[str, Any]:
    """The lineage recorded with a checkpoint at ``step``."""
    per_step = loader["global_batch"] * recipe.parallel.grad_accum
    current = {"first_step": start_step, "last_step": step, "first_position": start_position,
               "samples_per_step": per_step, "world_size": loader["world_size"]}
    return {
        "kind": "training",
        "run": recipe.name,
        "data": {"ref": pinned, "refs": [pinned], "versions": loader["versions"], "weights": loader["weights"],
                 "seed": loader["seed"], "shuffle": loader["shuffle"], "seq_len": loader["seq_len"],
                 "purpose": recipe.data.purpose},
        "segments": [s for s in segments if s["first_step"] < start_step] + [current],
        "samples_consumed": loader["position"],
        "step": step,
        "code": code_hash(),
    }


def step_positions(lineage: dict[str, Any], step: int) -> tuple[int, int]:
    """Global stream positions ``[start, end)`` consumed by optimiser step ``step`` (1-based)."""
    for seg in lineage["segments"]:
        if seg["first_step"] < step <= seg["last_step"]:
            start = seg["first_position"] + (step - 1 - seg["first_step"]) * seg["samples_per_step"]
            return start, start + seg["samples_per_step"]
    raise TrainError(f"step {step} is not in this checkpoint's lineage (steps 1..{lineage.get('step')})")


def sample_ids(store: Store, lineage: dict[str, Any], *, steps: range | None = None) -> list[tuple[int, int, int]]:
    """``(step, source, sample)`` of every sample consumed by ``steps`` (default all steps up to the checkpoint).

    ``source`` indexes ``lineage["data"]["versions"]``; ``sample`` is the sample index within that version (sample
    ``i`` of a tokens version is its tokens ``[i * seq_len, (i + 1) * seq_len)``).
    """
    from granary.stream import Mix, StreamingDataset

    data = lineage["data"]
    refs = list(data["refs"])
    mix = Mix(refs, weights=data["weights"]) if len(refs) > 1 else refs[0]
    ds = StreamingDataset(mix, batch_size=1, seq_len=data["seq_len"], seed=data["seed"], shuffle=data["shuffle"],
                          rank=0, world_size=1, store=store, output="numpy", purpose=data.get("purpose"))
    out: list[tuple[int, int, int]] = []
    for step in steps or range(1, int(lineage["step"]) + 1):
        a, b = step_positions(lineage, step)
        source, samples = ds.stream.locate(np.arange(a, b, dtype=np.int64))
        out.extend((step, int(s), int(i)) for s, i in zip(source.tolist(), samples.tolist(), strict=True))
    return out


def checkpoint_lineage(store: Store, ref: str) -> dict[str, Any]:
    """The lineage of checkpoint ``ref`` (a ``checkpoint`` dataset ref)."""
    manifest = store.manifest(store.resolve(ref))
    if manifest.kind != "checkpoint":
        raise TrainError(f"{ref} is a {manifest.kind} version, not a checkpoint",
                         hint="pass a run's checkpoint dataset, e.g. demo-ckpt or demo-ckpt@<version>")
    return dict(manifest.lineage)
