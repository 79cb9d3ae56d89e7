"""Launch a run through torchrun's elastic agent (``torch.distributed.run``): no launcher of our own.

A recipe (``.yaml``/``.yml``) runs ``python -m granary.train.entry RECIPE``; a script (``.py``) runs as is, and
may use the Python API piece by piece. ``--max-restarts K`` lets the agent restart every worker after a failure
(a killed rank, a watchdog exit); the trainer then resumes from the newest complete checkpoint.

A recipe's workers are forked from the agent (torchrun's function entrypoint with ``start_method="fork"``) once
the agent has imported what a worker needs (:func:`granary.train.entry.preload`): a start or restart then costs
one import of torch and the runtime, in the agent, instead of one per worker after the agent's own (on this
2-core machine that was most of the time from a restart to its first step). Forking is used only where it is
safe: no GPU is visible to a CUDA build (a forked CUDA context is unusable), and ``GRANARY_TRAIN_FORK`` is not
``0``; otherwise workers are fresh ``python -m granary.train.entry`` processes, as plain torchrun starts them.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

from granary.errors import TrainError

ENTRY_MODULE = "granary.train.entry"
LAUNCH_TIMES = "GRANARY_TRAIN_LAUNCH_TIMES"


def torchrun_args(target: str | Path, *, nproc_per_node: int = 1, nnodes: str = "1", rdzv_endpoint: str | None = None,
                  rdzv_id: str | None = None, max_restarts: int = 0, monitor_interval: float = 0.1,
                  script_args: list[str] | None = None) -> list[str]:
    """The argument list for ``torch.distributed.run`` (what ``torchrun`` would be given).

    ``monitor_interval`` is how often the agent looks at its workers: a worker's exit (a finished run, a kill, a
    stop for a resize) is noticed within it, so it is short; a look is one ``waitpid`` per worker.
    """
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
        args += ["-m", ENTRY_MODULE, str(path)]
    elif path.suffix == ".py":
        args += [str(path), *(script_args or [])]
    else:
        raise TrainError(f"{path}: expected a .yaml recipe or a .py script")
    return args


def fork_safe() -> bool:
    """Whether workers may be forked from the agent: no GPU a CUDA/ROCm build could use, and not turned off."""
    if os.environ.get("GRANARY_TRAIN_FORK", "1") == "0":
        return False
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return True
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return True
    return not any(Path("/dev").glob("nvidia[0-9]*")) and not Path("/dev/kfd").exists()


def launch(args: list[str]) -> int:
    """Run torchrun's elastic agent in this process; returns 0, or 1 when the job failed past its restarts."""
    mark("agent_launch", first=True)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main
    from torch.distributed.run import parse_args

    parsed = parse_args(args)
    mark("agent_torch_imported")
    try:
        if parsed.module and parsed.training_script == ENTRY_MODULE and not parsed.no_python and fork_safe():
            _launch_forked(parsed)
        else:
            torchrun_main(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        sys.stderr.write(f"granary train: the job failed after its restarts: rank {rank} exited with code "
                         f"{failure.exitcode} (its output is above)\n")
        return 1
    except SignalException as exc:  # SIGTERM (a preemption, a resize): the agent stopped its workers, which saved
        sys.stderr.write(f"granary train: stopped by signal {int(exc.sigval)}; the workers checkpointed and exited\n")
        return 128 + int(exc.sigval)
    return 0


def exit_now(code: int) -> None:
    """Leave the agent's process at once (after flushing) when it is the ``granary`` command: its workers have
    exited and their work is committed, and tearing down an interpreter that holds torch and torch._dynamo took
    seconds on a loaded machine (4-6 s at load 12), all of it between a resize's checkpoint and the next attempt's
    start; a SIGTERM to the job's group now ends it 0.4-0.8 s later."""
    import logging

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if getattr(spec, "name", None) != "granary.cli.main" and Path(sys.argv[0]).name != "granary":
        raise SystemExit(code)  # embedded (a test's CliRunner, a Python caller): leave the interpreter alone
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def mark(phase: str, *, first: bool = False) -> None:
    """Note when the agent reached ``phase`` (seconds since the epoch) in ``GRANARY_TRAIN_LAUNCH_TIMES``, which its
    workers inherit and rank 0 writes to the run's ``startup.jsonl`` (how a start or restart spent its time);
    ``first`` starts the record with the agent process's start."""
    import json
    import time

    times = {} if first else json.loads(os.environ.get(LAUNCH_TIMES, "{}") or "{}")
    if first:
        times["agent_started"] = process_started()
    times[phase] = round(time.time(), 3)
    os.environ[LAUNCH_TIMES] = json.dumps(times)


def process_started(pid: int | str = "self") -> float:
    """When a process started, in seconds since the epoch (from ``/proc``: its start in clock ticks after boot,
    and the uptime, both to 10 ms; psutil's ``create_time`` rounds the boot time to whole seconds)."""
    import time

    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(") ", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return round(time.time(), 3)
    return round(time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK"), 3)


def _launch_forked(parsed: object) -> None:
    """``torch.distributed.run.run`` with the recipe worker as a function entrypoint, forked from this agent."""
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args

    from granary.train import entry

    a = parsed  # an argparse.Namespace of torchrun's own parser; the fix-ups below are run()'s
    if a.standalone:  # type: ignore[attr-defined]
        a.rdzv_backend, a.rdzv_endpoint, a.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())  # type: ignore[attr-defined]
    if a.master_port is None:  # type: ignore[attr-defined]
        a.master_port = 29500  # type: ignore[attr-defined]
    a.start_method = "fork"  # type: ignore[attr-defined]
    config, _cmd, _cmd_args = config_from_args(a)
    entry.preload()
    mark("agent_preloaded")
    elastic_launch(config=config, entrypoint=entry.worker)(*a.training_script_args)  # type: ignore[attr-defined]
