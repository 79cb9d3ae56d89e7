"""What each torchrun worker runs for a recipe: ``python -m granary.train.entry RECIPE.yaml``."""

from __future__ import annotations

import json
import os
import sys

from granary.errors import GranaryError

# The trainer of this worker, kept referenced until the process leaves through os._exit. Freeing it frees DDP's
# Reducer, whose gloo process group joins its worker threads in the destructor while the freeing thread holds the
# GIL; a gloo thread waiting for the GIL then deadlocks the rank after its work is done (py-spy showed the main
# thread in ~ProcessGroupGloo -> std::thread::join and a gloo thread in gil_scoped_acquire, after an elastic
# resize in a full-suite run). Nothing needs freeing: the results are committed and the process ends here.
_alive: list[object] = []


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m granary.train.entry RECIPE.yaml\n")
        return 2
    from granary.train.recipe import load_recipe
    from granary.train.trainer import Trainer

    try:
        trainer = Trainer(load_recipe(args[0]))
        _alive.append(trainer)
        result = trainer.fit()
    except GranaryError as exc:
        sys.stderr.write(f"granary train: {exc}\n")
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({"steps": result.steps, "resumed_from": result.resumed_from, "final_loss": result.final_loss,
                          "checkpoints": result.checkpoints[-1:], "restarts": result.restarts}))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The worker's work is done and committed (checkpoint versions, metrics closed), so it leaves without freeing
    # the trainer or tearing down the interpreter (see _alive above); torchrun would otherwise wait on a hung rank.
    os._exit(code)
