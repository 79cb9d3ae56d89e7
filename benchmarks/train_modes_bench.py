"""Synchronous all-reduce (DDP), DiLoCo and the asynchronous parameter server on the same recipe, with and without
a straggler, in one run (CPU, gloo / TensorPipe, ``granary train`` under torchrun).

Every mode sees the same data and the same number of samples: DDP and DiLoCo take ``--steps`` steps of one batch
per rank; the parameter server takes ``--steps x --nproc`` updates of one batch each (one gradient per update).
The straggler is ``GRANARY_TRAIN_SLOW=1:SECONDS`` (rank 1 sleeps that long after each of its gradients).

Reported per run: time to the target loss (seconds from the first step's start to the first step whose mean loss
over the last 5 logged steps is at or below the target; the target is all-reduce's smoothed loss at 75% of its
steps without a straggler, unless ``--target-loss``), the run's wall time, bytes communicated (DDP/DiLoCo: the
payload each rank hands to all-reduce, summed over steps; parameter server: gradients in and parameters and
batches out over the network, summed at the server), final smoothed loss, and ratios against all-reduce.

    python benchmarks/train_modes_bench.py [--nproc 2] [--steps 120] [--slow 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import BATCH, MODEL, make_data


def run_mode(home: Path, name: str, steps: int, parallel: dict[str, Any], nproc: int,
             slow: float) -> dict[str, Any]:
    import yaml

    from granary.train.metrics import read_metrics

    run_dir = home / "runs" / name
    spec = {"name": name, "steps": steps, "seed": 0, "run_dir": str(run_dir), "threads": 1, "model": MODEL,
            "data": {"dataset": "bench-tok", "batch_size": BATCH},
            "optim": {"lr": 0.002, "schedule": "constant", "warmup_steps": 0},
            "checkpoint": {"every": 0, "resume": False}, "fault": {"step_timeout_s": 0}, "parallel": parallel}
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "GRANARY_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("GRANARY_TRAIN_SLOW", None)
    if slow > 0:
        env["GRANARY_TRAIN_SLOW"] = f"1:{slow}"
    cmd = [sys.executable, "-m", "granary.cli.main", "train", str(path), "--nproc-per-node", str(nproc)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{name}: {' '.join(cmd)} failed")
    recs = [r for r in read_metrics(run_dir) if "loss" in r]
    start = recs[0]["time"] - recs[0]["step_seconds"]
    smooth = [sum(r["loss"] for r in recs[max(0, i - 4):i + 1]) / len(recs[max(0, i - 4):i + 1])
              for i in range(len(recs))]
    return {"times": [r["time"] - start for r in recs], "smooth": smooth, "wall_s": wall,
            "bytes": sum(r.get("comm_bytes") or 0 for r in recs), "final": smooth[-1],
            "rejected": recs[-1].get("rejected_total"), "updates_by_worker": recs[-1].get("updates_by_worker")}


def time_to(run: dict[str, Any], target: float) -> float | None:
    for t, loss in zip(run["times"], run["smooth"], strict=True):
        if loss <= target:
            return float(t)
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--slow", type=float, default=0.1, help="the straggler's seconds per step (rank 1)")
    ap.add_argument("--diloco-h", type=int, default=10)
    ap.add_argument("--staleness", type=int, default=4)
    ap.add_argument("--target-loss", type=float, default=0.0)
    args = ap.parse_args()
    print(f"load average: {os.getloadavg()}", flush=True)
    modes = {"allreduce": ({"mode": "ddp"}, args.steps),
             "diloco": ({"mode": "diloco", "diloco_h": args.diloco_h, "diloco_outer_lr": 1.0}, args.steps),
             "param_server": ({"mode": "param_server", "ps_staleness": args.staleness}, args.steps * args.nproc)}
    results: dict[tuple[str, float], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="granary-modes-bench-") as tmp:
        home = Path(tmp)
        os.environ["GRANARY_HOME"] = str(home)
        make_data(home)
        for slow in (0.0, args.slow):
            for name, (parallel, steps) in modes.items():
                tag = f"{name}-slow{slow}"
                results[(name, slow)] = run_mode(home, tag, steps, parallel, args.nproc, slow)
                print(f"  {tag}: wall {results[(name, slow)]['wall_s']:.1f} s, load {os.getloadavg()[0]:.1f}",
                      flush=True)
    ar = results[("allreduce", 0.0)]
    target = args.target_loss or ar["smooth"][int(len(ar["smooth"]) * 0.75) - 1]
    print(f"\ntarget loss {target:.4f} ({args.nproc} ranks, {args.steps} steps x batch {BATCH} per rank)")
    print(f"{'mode':<14}{'straggler s':>12}{'to target s':>13}{'vs AR':>8}{'wall s':>9}{'MB sent':>10}"
          f"{'bytes vs AR':>13}{'final loss':>12}  notes")
    for slow in (0.0, args.slow):
        base = results[("allreduce", slow)]
        base_t = time_to(base, target)
        for name in modes:
            r = results[(name, slow)]
            t = time_to(r, target)
            ratio = f"{t / base_t:.2f}x" if t is not None and base_t else "-"
            notes = (f"rejected {r['rejected']}, updates by worker {r['updates_by_worker']}"
                     if name == "param_server" else "")
            print(f"{name:<14}{slow:>12.2f}{(f'{t:.1f}' if t is not None else 'not reached'):>13}{ratio:>8}"
                  f"{r['wall_s']:>9.1f}{r['bytes'] / 1e6:>10.2f}{r['bytes'] / max(base['bytes'], 1):>12.3f}x"
                  f"{r['final']:>12.4f}  {notes}")
    print(f"load average: {os.getloadavg()}")
    print(json.dumps({f"{k[0]}@{k[1]}": {"to_target_s": time_to(v, target), "wall_s": v["wall_s"],
                                          "bytes": v["bytes"], "final": v["final"]} for k, v in results.items()}))


if __name__ == "__main__":
    main()
