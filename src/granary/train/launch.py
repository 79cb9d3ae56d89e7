"""Launch a run through torchrun's elastic agent (``torch.distributed.run``): no launcher of our own.

A recipe (``.yaml``/``.yml``) runs ``python -m granary.train.entry RECIPE``; a script (``.py``) runs as is, and
may use the Python API piece by piece. ``--max-restarts K`` lets the agent restart every worker after a failure
(a killed rank, a watchdog exit); the trainer then resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

from granary.errors import TrainError


def torchrun_args(target: str | Path, *, nproc_per_node: int = 1, nnodes: str = "1", rdzv_endpoint: str | None = None,
                  rdzv_id: str | None = None, max_restarts: int = 0, monitor_interval: float = 0.5,
                  script_args: list[str] | None = None) -> list[str]:
    """The argument list for ``torch.distributed.run`` (what ``torchrun`` would be given)."""
    path = Path(target)
    if not path.is_file():
        raise TrainError(f"no recipe or script at {path}", hint="pass a RECIPE.yaml or a SCRIPT.py")
    if nproc_per_node < 1 or max_restarts < 0:
        raise TrainError(f"--nproc-per-node must be >= 1 and --max-restarts >= 0 "
                         f"(got {nproc_per_node}, {max_restarts})")
    args = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", f"--max-restarts={max_restarts}",
            f"--monitor-interval={monitor_interval}"]
    if rdzv_endpoint:
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id or path.stem}"]
    elif nnodes not in ("1", "1:1"):
        raise TrainError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (where the nodes meet)")
    else:
        args.append("--standalone")
    if path.suffix in (".yaml", ".yml"):
        from granary.train.recipe import load_recipe

        load_recipe(path)  # fail here, once, rather than in every worker
        args += ["-m", "granary.train.entry", str(path)]
    elif path.suffix == ".py":
        args += [str(path), *(script_args or [])]
    else:
        raise TrainError(f"{path}: expected a .yaml recipe or a .py script")
    return args


def launch(args: list[str]) -> int:
    """Run torchrun's elastic agent in this process; returns 0, or 1 when the job failed past its restarts."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        sys.stderr.write(f"granary train: the job failed after its restarts: rank {rank} exited with code "
                         f"{failure.exitcode} (its output is above)\n")
        return 1
    return 0
