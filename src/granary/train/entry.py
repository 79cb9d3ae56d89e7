"""What each torchrun worker runs for a recipe: ``python -m granary.train.entry RECIPE.yaml``, or :func:`worker`
called in a process forked from the agent (see :mod:`granary.train.launch`), which :func:`preload` readied."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from granary.errors import GranaryError

# The trainer of this worker, kept referenced until the process leaves through os._exit. Freeing it frees DDP's
# Reducer, whose gloo process group joins its worker threads in the destructor while the freeing thread holds the
# GIL; a gloo thread waiting for the GIL then deadlocks the rank after its work is done (py-spy showed the main
# thread in ~ProcessGroupGloo -> std::thread::join and a gloo thread in gil_scoped_acquire, after an elastic
# resize in a full-suite run). Nothing needs freeing: the results are committed and the process ends here.
_alive: list[object] = []
_forked = False  # set by worker(): this process was forked from the agent
_started = 0.0  # when worker() began

# What a worker imports before its first step, imported once by the agent before it forks the workers. DDP's
# constructor imports torch._dynamo (about 1 s alone on an idle core); the rest is the runtime, the store and
# the loader (reading a manifest imports pandas through pyarrow.compute).
PRELOAD = ("torch", "torch._dynamo", "torch.distributed.checkpoint", "torch.distributed.checkpoint.state_dict",
           "granary.train.trainer", "granary.store", "granary.stream", "granary.train.recipe",
           "granary.sched.checkpoint", "sqlalchemy.dialects.sqlite", "pyarrow.compute", "pandas")


def preload() -> None:
    """Import what a worker needs (in the agent, before it forks them); runs no torch operation."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional part (a dialect without its driver): the worker imports it if it must
            continue


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m granary.train.entry RECIPE.yaml\n")
        return 2
    from granary.train.launch import process_started

    started = _started or process_started()
    from granary.train.recipe import load_recipe
    from granary.train.trainer import Trainer

    try:
        trainer = Trainer(with_scheduled_batch(load_recipe(args[0])))
        _alive.append(trainer)
        _record_startup(trainer.run_dir, started)
        _report_run(trainer)
        result = trainer.fit()
    except GranaryError as exc:
        sys.stderr.write(f"granary train: {exc}\n")
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({"steps": result.steps, "resumed_from": result.resumed_from, "final_loss": result.final_loss,
                          "checkpoints": result.checkpoints[-1:], "restarts": result.restarts}))
    return 0


BATCH_VAR = "GRANARY_GLOBAL_BATCH_SIZE"


def with_scheduled_batch(recipe: Any) -> Any:
    """The recipe with the global batch size the scheduler chose (``GRANARY_GLOBAL_BATCH_SIZE``, set for a
    resizable job that names a batch range, see docs/sched.md) split over this run's data-parallel ranks and
    gradient-accumulation steps: ``data.batch_size`` becomes ``max(1, global // (replicas * grad_accum))``.
    Without the variable the recipe is unchanged. The loader resumes exactly at another batch size (its position
    counts samples), and the lineage records each run of steps with its samples per step."""
    import dataclasses
    import logging

    value = os.environ.get(BATCH_VAR, "").strip()
    if not value:
        return recipe
    try:
        total = int(value)
    except ValueError:
        raise GranaryError(f"{BATCH_VAR}={value!r} is not an integer") from None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    replicas = 1 if world == 1 or recipe.parallel.mode in ("tp", "pp") else world
    per_rank = max(1, total // (replicas * recipe.parallel.grad_accum))
    if per_rank != recipe.data.batch_size:
        logging.getLogger(__name__).warning("%s: global batch %d from the scheduler: %d per rank (recipe: %d)",
                                            recipe.name, total, per_rank, recipe.data.batch_size)
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, batch_size=per_rank))


def worker(recipe: str) -> None:
    """torchrun's function entrypoint for a recipe, in a worker forked from the agent.

    The worker leaves the agent's process group first, as torchrun's subprocess workers (own sessions) do: a
    SIGTERM sent to the job's group then reaches the workers once, through the agent; a second SIGTERM would
    make them exit at once, without their checkpoint. Its process ends in multiprocessing's ``os._exit``, so the
    trainer kept in ``_alive`` is never freed (see above).
    """
    global _forked, _started
    _forked, _started = True, time.time()
    os.setsid()
    code = main([recipe])
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        raise SystemExit(code)


def _report_run(trainer: Any) -> None:
    """Rank 0 tells the scheduler (when it launched this job) where the step times are and the samples per rank."""
    if os.environ.get("RANK", "0") != "0":
        return
    from granary.sched.checkpoint import report_run

    r = trainer.recipe
    world = int(os.environ.get("WORLD_SIZE", "1"))
    replicas = 1 if world == 1 or r.parallel.mode in ("tp", "pp") else world
    report_run(trainer.run_dir, local_batch=r.data.batch_size * r.parallel.grad_accum * replicas / world,
               world_size=world)


def _record_startup(run_dir: object, started: float) -> None:
    """Append when the agent started and reached its phases (:func:`granary.train.launch.mark`), when this worker
    started and when its imports were done to ``startup.jsonl`` in the run folder (rank 0): with
    ``restarts.jsonl`` (resumed) and the metrics (first step) it says how a start or restart spent its time."""
    if os.environ.get("RANK", "0") != "0":
        return
    from pathlib import Path

    from granary.train.launch import LAUNCH_TIMES

    path = Path(str(run_dir))
    path.mkdir(parents=True, exist_ok=True)
    record = {"attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
              "job_attempt": os.environ.get("GRANARY_ATTEMPT"), "forked": _forked,
              **json.loads(os.environ.get(LAUNCH_TIMES, "{}") or "{}"),
              "worker_started": round(started, 3), "worker_imported": round(time.time(), 3)}
    with open(path / "startup.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The worker's work is done and committed (checkpoint versions, metrics closed), so it leaves without freeing
    # the trainer or tearing down the interpreter (see _alive above); torchrun would otherwise wait on a hung rank.
    os._exit(code)
