"""A user script run by `granary train SCRIPT.py --nproc-per-node 4`: FSDP2 x TP on a (2, 2) device mesh.

Trains 4 steps with a checkpoint at 2 and 4, then 2 more steps resumed from the checkpoint; writes a JSON summary
(rank 0) to argv[1].
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from modes_script import recipe_for  # this folder is on the path of a script run by torchrun

from granary.train import Dist, fit
from granary.train.metrics import read_metrics


def main(out: Path) -> None:
    dist = Dist.init()
    summary: dict[str, Any] = {}
    for steps in (4, 6):
        result = fit(recipe_for("mesh", out.parent, steps, mode="fsdp_tp", tp_size=2))
        summary[str(steps)] = {"steps": result.steps, "resumed_from": result.resumed_from}
    if dist.rank == 0:
        summary["losses"] = [r["loss"] for r in read_metrics(out.parent / "mesh") if "loss" in r]
        summary["grad_norms"] = [r["grad_norm"] for r in read_metrics(out.parent / "mesh") if "loss" in r]
        out.write_text(json.dumps(summary))
    dist.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
