"""A user script run by `granary train SCRIPT.py --nproc-per-node 2`: every parallel mode on one process group.

Writes a JSON summary (rank 0) to argv[1]. Uses the Python API piece by piece, as a user's script would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from granary.train import Dist, Recipe, fit, recipe_from_dict
from granary.train.metrics import read_metrics


def recipe_for(name: str, run_root: Path, steps: int = 4, async_save: bool = False, **parallel: Any) -> Recipe:
    return recipe_from_dict({
        "name": name, "steps": steps, "seed": 2, "run_dir": str(run_root / name),
        "model": {"vocab_size": 256, "d_model": 16, "n_layers": 2, "n_heads": 2, "context": 16},
        "data": {"dataset": "tiny-tok", "batch_size": 4}, "optim": {"lr": 0.01, "grad_clip": 1.0},
        "checkpoint": {"every": 2, "async_save": async_save}, "parallel": parallel,
    })


# fp16 with a dynamic loss scale that overflows at first: steps 1 and 2 are skipped on every rank alike
FP16: dict[str, Any] = {"mixed_precision": "fp16", "fp16_init_scale": 2.0**21, "diloco_h": 2}


def main(out: Path) -> None:
    dist = Dist.init()  # the script owns the process group; each fit joins it

    def run(name: str, steps: int = 4, **parallel: Any) -> dict[str, Any]:
        result = fit(recipe_for(name, out.parent, steps, **parallel))
        if name == "async":
            return {"steps": result.steps, "checkpoints": result.checkpoints}
        records = [r for r in read_metrics(out.parent / name) if "loss" in r] if dist.rank == 0 else []
        return {"steps": result.steps, "resumed_from": result.resumed_from,
                "losses": [r["loss"] for r in records], "bytes": [r["comm_bytes"] for r in records],
                "scales": [r.get("loss_scale") for r in records]}

    summary = {
        "ddp": run("ddp", mode="ddp"),
        "async": run("async", mode="ddp", async_save=True),
        "ddp_fp16": run("fp16", mode="ddp", comm_hook="fp16"),
        "powersgd": run("psgd", steps=6, mode="ddp", comm_hook="powersgd", powersgd_rank=1),
        "fsdp": run("fsdp", mode="fsdp", mixed_precision="bf16"),
        "fsdp_resumed": run("fsdp", steps=6, mode="fsdp", mixed_precision="bf16"),
        "elastic": run("elastic", mode="ddp"),  # its first 2 steps were trained at world size 1 (the test did)
        "tp": run("tp", mode="tp"),
        "gpipe": run("gpipe", mode="pp", pp_schedule="gpipe", pp_microbatches=2),
        "1f1b": run("1f1b", mode="pp", pp_schedule="1f1b", pp_microbatches=2),
        "diloco": run("diloco", mode="diloco", diloco_h=2),
        "diloco_async": run("dasync", steps=6, mode="diloco", diloco_h=2, diloco_delay=1),
        **{f"{mode}_amp16": run(f"{mode}16", steps=6, mode=mode, **FP16)
           for mode in ("ddp", "fsdp", "tp", "diloco")},
    }
    if dist.rank == 0:
        out.write_text(json.dumps(summary))
    dist.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
