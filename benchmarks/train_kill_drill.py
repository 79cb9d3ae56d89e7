"""The exactness drill of the training runtime: random kill -9s and an elastic 4 -> 2 change, each against an
uninterrupted run, on CPU with gloo and real `granary train` (torchrun) processes.

For each world size (2 and 4 ranks): one uninterrupted run, then ``--kills`` runs that each SIGKILL one random rank
at one random step (a random phase: after the optimiser step, or in the middle of a checkpoint save when the step
saves one). Each killed run must resume by itself and match the uninterrupted one bit for bit: every step's loss,
the final parameters and optimiser state, and the sequence of consumed sample ids (read back from the checkpoint's
lineage through the store). Then the elastic change: 4 ranks train the first half, 2 ranks (with twice the
gradient accumulation, so the global batch stays 16) the rest; the samples of every step must be the same as the
4-rank run's and the losses equal within floating-point tolerance.

    .venv/bin/python benchmarks/train_kill_drill.py [--kills 10] [--steps 16] [--seed 0]

Prints one line per run and a summary; exits 1 if any run differs. JSON to benchmarks/out/train_kill_drill.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from granary.config import Settings
from granary.store import open_store

EVERY = 4  # checkpoint interval (steps)
BATCH = 4  # samples per rank and micro-batch


def make_tokens(home: Path) -> None:
    store = open_store(Settings.from_env(home=home))
    store.create_dataset("drill-tok", kind="tokens")
    rng = np.random.default_rng(0)
    with store.transaction("drill-tok") as txn:  # a learnable stream: documents that count up modulo 256
        txn.write_tokens((((rng.integers(0, 256) + np.arange(rng.integers(20, 80))) % 256).astype(np.uint16)
                          for _ in range(600)), shard_tokens=4000)
        txn.commit(message="drill tokens")


def recipe(path: Path, name: str, *, steps: int, grad_accum: int = 1) -> Path:
    path.write_text(yaml.safe_dump({
        "name": name, "steps": steps, "seed": 3, "run_dir": str(path.parent / name),
        "model": {"vocab_size": 256, "d_model": 16, "n_layers": 2, "n_heads": 2, "context": 16},
        "data": {"dataset": "drill-tok", "batch_size": BATCH, "seed": 5},
        "optim": {"lr": 0.01, "warmup_steps": 2},
        "parallel": {"grad_accum": grad_accum},
        "checkpoint": {"every": EVERY},
        "fault": {"step_timeout_s": 300},
    }))
    return path


def train(home: Path, target: Path, nproc: int, chaos: str | None = None, timeout_s: float = 900,
          restarts: int = 3, expect_failure: bool = False) -> float:
    """Run `granary train`; returns its wall time. The whole process group is killed on a timeout."""
    env = {**os.environ, "GRANARY_HOME": str(home), "OMP_NUM_THREADS": "1"}
    if chaos:
        env["GRANARY_TRAIN_CHAOS"] = chaos
    cmd = [sys.executable, "-m", "granary.cli.main", "train", str(target), "--nproc-per-node", str(nproc),
           "--max-restarts", str(restarts)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    if (proc.returncode != 0) != expect_failure:
        raise SystemExit(f"granary train {target.name} failed ({proc.returncode}):\n{out}\n{(err or '')[-4000:]}")
    return time.perf_counter() - start


def results(home: Path, run_dir: Path, ckpt: str) -> dict[str, Any]:
    """Per-step losses (the last logged of each step), the final checkpoint's tensors and the consumed sample ids."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from granary.train.lineage import checkpoint_lineage, sample_ids
    from granary.train.metrics import read_metrics

    records = [r for r in read_metrics(run_dir) if "loss" in r]
    store = open_store(Settings.from_env(home=home))
    manifest = store.open_version(ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        for entry in manifest.shards:
            (Path(tmp) / entry.meta["name"]).write_bytes(store.object_bytes(entry))
        dcp_to_torch_save(tmp, Path(tmp) / "all.pt")
        state = torch.load(io.BytesIO((Path(tmp) / "all.pt").read_bytes()), weights_only=False)
    lineage = checkpoint_lineage(store, ckpt)
    return {"losses": {r["step"]: r["loss"] for r in records}, "attempts": len({r["attempt"] for r in records}),
            "state": state, "ids": sample_ids(store, lineage), "segments": lineage["segments"]}


def same_state(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    import torch

    bad = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    for k, v in a["optim"]["state"].items():
        bad += [f"optim {k}.{n}" for n, t in v.items()
                if not torch.equal(torch.as_tensor(t), torch.as_tensor(b["optim"]["state"][k][n]))]
    return bad


def kill_runs(home: Path, root: Path, world: int, steps: int, kills: int, rng: random.Random) -> list[dict[str, Any]]:
    base_name = f"w{world}-base"
    wall = train(home, recipe(root / f"{base_name}.yaml", base_name, steps=steps), world)
    base = results(home, root / base_name, f"{base_name}-ckpt")
    print(f"{world} ranks, uninterrupted: {steps} steps in {wall:.1f} s, loss {base['losses'][1]:.4f} -> "
          f"{base['losses'][steps]:.4f}", flush=True)
    rows = []
    for k in range(kills):
        rank, step = rng.randrange(world), rng.randint(1, steps - 1)
        phase = rng.choice(["step", "save"]) if step % EVERY == 0 else "step"
        name = f"w{world}-kill{k}"
        wall = train(home, recipe(root / f"{name}.yaml", name, steps=steps), world, chaos=f"kill:{rank}:{step}:{phase}")
        got = results(home, root / name, f"{name}-ckpt")
        row = {"world": world, "rank": rank, "step": step, "phase": phase, "wall_s": round(wall, 1),
               "attempts": got["attempts"], "losses_equal": got["losses"] == base["losses"],
               "ids_equal": got["ids"] == base["ids"], "state_differs": same_state(got["state"], base["state"])}
        row["ok"] = row["losses_equal"] and row["ids_equal"] and not row["state_differs"] and got["attempts"] >= 2
        rows.append(row)
        print(f"  kill -9 of rank {rank} at step {step} ({phase}): {got['attempts']} attempts, {wall:.1f} s; "
              f"losses {'identical' if row['losses_equal'] else 'DIFFER'}, sample ids "
              f"{'identical' if row['ids_equal'] else 'DIFFER'}, final state "
              f"{'identical' if not row['state_differs'] else 'DIFFERS: ' + ', '.join(row['state_differs'][:3])}",
              flush=True)
    return rows


def elastic(home: Path, root: Path, steps: int) -> dict[str, Any]:
    """4 ranks for the first half, then 2 ranks with grad_accum 2 (the same global batch) to the end.

    The 4-rank part is the same recipe (the learning-rate schedule spans every step), stopped by a kill -9 of rank
    0 right after the first step past the half with no restart allowed; the 2-rank part resumes from the
    checkpoint at the half."""
    base = results(home, root / "w4-base", "w4-base-ckpt")
    half = steps // 2 // EVERY * EVERY
    train(home, recipe(root / "el-a.yaml", "elastic", steps=steps), 4, chaos=f"kill:0:{half + 1}", restarts=0,
          expect_failure=True)
    train(home, recipe(root / "el-b.yaml", "elastic", steps=steps, grad_accum=2), 2)
    got = results(home, root / "elastic", "elastic-ckpt")
    per_step = lambda ids: {s: sorted((src, i) for t, src, i in ids if t == s) for s in range(1, steps + 1)}  # noqa: E731
    diff = max(abs(got["losses"][s] - base["losses"][s]) for s in range(1, steps + 1))
    row = {"steps_at_4": half, "segments": [(s["first_step"], s["last_step"], s["world_size"], s["samples_per_step"])
                                            for s in got["segments"]],
           "samples_equal_per_step": per_step(got["ids"]) == per_step(base["ids"]),
           "max_abs_loss_diff": diff, "final_loss": got["losses"][steps], "base_final_loss": base["losses"][steps]}
    row["ok"] = row["samples_equal_per_step"] and diff < 1e-4
    print(f"elastic 4 -> 2 ranks at step {half}: samples of every step "
          f"{'identical' if row['samples_equal_per_step'] else 'DIFFER'}; largest loss difference {diff:.2e} "
          f"(final {got['losses'][steps]:.6f} vs {base['losses'][steps]:.6f})", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10, help="killed runs per world size")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worlds", default="2,4")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="train-drill-") as tmp:
        root = Path(tmp)
        home = root / "home"
        make_tokens(home)
        rows: list[dict[str, Any]] = []
        for world in (int(w) for w in a.worlds.split(",")):
            rows += kill_runs(home, root, world, a.steps, a.kills, rng)
        el = elastic(home, root, a.steps) if "4" in a.worlds.split(",") else None
    ok = all(r["ok"] for r in rows) and (el is None or el["ok"])
    summary = {"killed_runs": len(rows), "identical": sum(r["ok"] for r in rows), "elastic": el, "ok": ok,
               "wall_s": round(time.perf_counter() - start, 1), "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    print(f"\n{summary['identical']}/{summary['killed_runs']} killed runs identical to the uninterrupted ones; "
          f"elastic 4 -> 2 {'passed' if el and el['ok'] else 'FAILED' if el else 'not run'}; "
          f"{summary['wall_s']} s, load {summary['load']}")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "train_kill_drill.json").write_text(json.dumps({"runs": rows, **summary}, indent=1, default=str))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
