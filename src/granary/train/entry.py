"""What each torchrun worker runs for a recipe: ``python -m granary.train.entry RECIPE.yaml``."""

from __future__ import annotations

import json
import os
import sys

from granary.errors import GranaryError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m granary.train.entry RECIPE.yaml\n")
        return 2
    from granary.train.recipe import load_recipe
    from granary.train.trainer import fit

    try:
        result = fit(load_recipe(args[0]))
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
    # The worker's work is done and committed (checkpoint versions, metrics closed, process group destroyed), so it
    # leaves without interpreter teardown: after an elastic restart, a native thread left by the dead attempt's
    # collectives could block the normal exit forever (a rank that printed its result and then never exited was
    # seen once in a full-suite run), and torchrun would wait on it.
    os._exit(code)
