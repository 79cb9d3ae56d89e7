"""Training runtime benchmark, Granary side by side with the plain PyTorch anchors, in one run (CPU).

1. throughput: Granary's Trainer (streaming loader, metrics, checkpoints only at the end) against a plain PyTorch
   loop on the same GPT, the same optimiser and the same batches already in memory: tokens/s ratio.
2. checkpoints: the same run with a checkpoint (DCP committed into the store) every 10 steps against none:
   step-rate ratio; one checkpoint's save and load time against torch.save / torch.load of the same state.
3. communication (2 ranks, gloo, torchrun): bytes per step of plain all-reduce, PowerSGD (rank 4) and the
   DiLoCo-style mode (H = 50), and their final losses.
4. recovery (2 ranks, torchrun --max-restarts): seconds from a SIGKILL of rank 1 to the first finished step of
   the restarted job.

    python benchmarks/train_bench.py [--steps 60] [--skip-dist]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL = {"vocab_size": 1024, "d_model": 64, "n_layers": 2, "n_heads": 4, "context": 64}
BATCH = 8


def make_data(home: Path, tokens: int = 400_000) -> None:
    import numpy as np

    from granary.config import Settings
    from granary.store import open_store

    store = open_store(Settings.from_env(home=home))
    store.create_dataset("bench-tok", kind="tokens", exist_ok=True)
    rng = np.random.default_rng(0)
    vocab = MODEL["vocab_size"]
    with store.transaction("bench-tok") as txn:
        # learnable documents (a random start, then a random stride repeated), so losses can be compared
        docs = (((rng.integers(0, vocab) + rng.integers(1, 8) * np.arange(int(n))) % vocab).astype(np.uint16)
                for n in rng.integers(200, 2000, size=tokens // 1100))
        txn.write_tokens(docs)
        txn.commit(message="bench tokens")


def recipe(name: str, run_dir: Path, steps: int, every: int, async_save: bool = False, **parallel: Any) -> Any:
    from granary.train.recipe import recipe_from_dict

    return recipe_from_dict({
        "name": name, "steps": steps, "seed": 0, "run_dir": str(run_dir / name), "threads": 2,
        "model": MODEL, "data": {"dataset": "bench-tok", "batch_size": BATCH}, "optim": {"lr": 0.001},
        "checkpoint": {"every": every, "resume": False, "async_save": async_save}, "fault": {"step_timeout_s": 0},
        "parallel": parallel,
    })


def plain_loop(steps: int) -> float:
    """The anchor: the same model and optimiser on random batches already in memory; tokens/s."""
    import torch

    from granary.train.model import GPT, loss_fn
    from granary.train.recipe import ModelConfig

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = GPT(ModelConfig(**MODEL))
    opt = torch.optim.AdamW(model.parameters(), lr=0.001)
    batches = [torch.randint(0, MODEL["vocab_size"], (BATCH, MODEL["context"] + 1)) for _ in range(16)]
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        t = batches[i % len(batches)]
        loss = loss_fn(model(t[:, :-1]), t[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return BATCH * MODEL["context"] / statistics.median(times[3:])


def granary_run(home: Path, name: str, steps: int, every: int, async_save: bool = False) -> dict[str, Any]:
    from granary.config import Settings
    from granary.store import open_store
    from granary.train.metrics import read_metrics
    from granary.train.trainer import fit

    store = open_store(Settings.from_env(home=home))
    r = recipe(name, home / "runs", steps, every, async_save)
    t0 = time.perf_counter()
    fit(r, store=store)
    wall = time.perf_counter() - t0
    recs = [x for x in read_metrics(home / "runs" / name) if "loss" in x]
    return {"tokens_per_second": statistics.median(x["tokens_per_second"] for x in recs[3:]),
            "wall_s": wall, "steps": len(recs), "store": store, "recipe": r}


def checkpoint_io(home: Path, store: Any, r: Any) -> dict[str, float]:
    """Save and load of one checkpoint through the store against torch.save / torch.load of the same state."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from granary.train.checkpoint import CheckpointManager
    from granary.train.dist import Dist
    from granary.train.model import GPT
    from granary.train.recipe import ModelConfig

    model = GPT(ModelConfig(**MODEL))
    opt = torch.optim.AdamW(model.parameters())
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    mgr = CheckpointManager(store, "io-ckpt", dist=Dist())
    mgr.ensure_dataset()
    saves, loads, tsaves, tloads = [], [], [], []
    for i in range(3):
        t0 = time.perf_counter()
        vid = mgr.save(i + 1, state, extra={}, metadata={}, lineage={})
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mgr.load(f"io-ckpt@{vid[:16]}", state)
        loads.append(time.perf_counter() - t0)
        path = home / f"plain-{i}.pt"
        t0 = time.perf_counter()
        torch.save(state, path)
        os.sync()
        tsaves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.load(io.BytesIO(path.read_bytes()), weights_only=False)
        tloads.append(time.perf_counter() - t0)
    return {"save_s": min(saves), "torch_save_s": min(tsaves), "load_s": min(loads), "torch_load_s": min(tloads),
            "state_mb": sum(t.numel() * t.element_size() for t in msd.values()) * 3 / 1e6}


# -- distributed parts (torchrun workers run this file with TRAIN_BENCH_OUT set) ------------------------------
def worker(out: Path, steps: int, outer_lr: float) -> None:
    from granary.train.dist import Dist
    from granary.train.metrics import read_metrics
    from granary.train.trainer import fit

    dist = Dist.init()
    runs = {"allreduce": {"mode": "ddp"}, "powersgd": {"mode": "ddp", "comm_hook": "powersgd", "powersgd_rank": 4},
            "diloco": {"mode": "diloco", "diloco_h": 50, "diloco_outer_lr": outer_lr},
            "diloco_async": {"mode": "diloco", "diloco_h": 50, "diloco_delay": 5, "diloco_outer_lr": outer_lr}}
    summary = {}
    for name, parallel in runs.items():
        r = recipe(f"comm-{name}", out.parent, steps, 0, **parallel)
        t0 = time.perf_counter()
        res = fit(r)
        seconds = time.perf_counter() - t0
        recs = [x for x in read_metrics(out.parent / f"comm-{name}") if "loss" in x] if dist.rank == 0 else []
        tail = [x["loss"] for x in recs[-10:]]
        summary[name] = {"bytes_per_step": sum(x["comm_bytes"] for x in recs) / max(1, len(recs)),
                         "final_loss": statistics.mean(tail) if tail else res.final_loss, "seconds": seconds,
                         "step_s": statistics.median([x["step_seconds"] for x in recs]) if recs else 0.0}
    if dist.rank == 0:
        out.write_text(json.dumps(summary))
    dist.close()


def torchrun(home: Path, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "granary.cli.main", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "GRANARY_HOME": str(home), **(env or {})})
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{' '.join(cmd)} failed")
    return proc


def recovery(home: Path) -> float:
    """Seconds from the SIGKILL of rank 1 to the first step the restarted job finished."""
    import yaml

    run_dir = home / "runs" / "recover"
    spec = {"name": "recover", "steps": 30, "run_dir": str(run_dir), "threads": 1, "model": MODEL,
            "data": {"dataset": "bench-tok", "batch_size": BATCH}, "checkpoint": {"every": 10}}
    path = home / "recover.yaml"
    path.write_text(yaml.safe_dump(spec))
    torchrun(home, [str(path), "--nproc-per-node", "2", "--max-restarts", "2"],
             env={"GRANARY_TRAIN_CHAOS": "kill:1:15"})
    killed_at = (run_dir / "chaos-0.fired").stat().st_mtime
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = min(x["time"] for x in recs if x.get("attempt", 0) >= 1 and "loss" in x)
    return first - killed_at


def async_checkpoint_cost(home: Path, steps: int, rounds: int) -> tuple[float, list[float], list[float]]:
    """Wall time of a run with an asynchronous checkpoint every 50 steps over the same run without checkpoints,
    in alternating pairs (the order flips each round); returns the median ratio, the per-round ratios and the
    seconds each save held the training thread (``Trainer._save``, the final drain excluded)."""
    from granary.train.trainer import Trainer

    held: list[float] = []
    original = Trainer._save

    def timed(self: Any, *args: Any, **kwargs: Any) -> str:
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            held.append(time.perf_counter() - t0)

    Trainer._save = timed  # type: ignore[method-assign]
    ratios = []
    try:
        for i in range(rounds):
            order = [("none", 0, False), ("async50", 50, True)]
            walls = {}
            for tag, every, async_save in (order if i % 2 == 0 else order[::-1]):
                walls[tag] = granary_run(home, f"ac-{tag}-{i}", steps, every, async_save)["wall_s"]
            ratios.append(walls["async50"] / walls["none"])
    finally:
        Trainer._save = original  # type: ignore[method-assign]
    return statistics.median(ratios), ratios, held


def single_process_rows(home: Path, steps: int) -> list[tuple[str, Any]]:
    plain = plain_loop(steps)
    g = granary_run(home, "nockpt", steps, 0)
    c = granary_run(home, "ckpt", steps, 10)
    io_ = checkpoint_io(home, g["store"], g["recipe"])
    return [
        ("plain PyTorch loop tokens/s", plain), ("Granary Trainer tokens/s", g["tokens_per_second"]),
        ("  ratio (target >= 0.95 on GPU)", g["tokens_per_second"] / plain),
        ("Granary, checkpoint every 10 steps, tokens/s", c["tokens_per_second"]),
        ("  wall-clock step-rate ratio vs no checkpoints (target >= 0.95 at every 50)", g["wall_s"] / c["wall_s"]),
        (f"checkpoint save s ({io_['state_mb']:.1f} MB) / torch.save s", f"{io_['save_s']:.3f} / "
         f"{io_['torch_save_s']:.3f} = {io_['save_s'] / io_['torch_save_s']:.2f}x"),
        ("checkpoint load s / torch.load s", f"{io_['load_s']:.3f} / {io_['torch_load_s']:.3f} = "
         f"{io_['load_s'] / io_['torch_load_s']:.2f}x"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip-dist", action="store_true", help="only the single-process parts")
    ap.add_argument("--only-dist", action="store_true", help="only the 2-rank parts (communication, recovery)")
    ap.add_argument("--diloco-outer-lr", type=float, default=1.0,
                    help="DiLoCo's outer learning rate (the recipe default is 0.7; see docs/train.md)")
    ap.add_argument("--no-recovery", action="store_true", help="skip the kill -9 recovery timing")
    ap.add_argument("--async-ckpt-steps", type=int, default=0,
                    help="also time runs of this many steps with an asynchronous checkpoint every 50 against none "
                         "(alternating pairs; 0: skip)")
    ap.add_argument("--async-ckpt-rounds", type=int, default=3)
    args = ap.parse_args()
    if os.environ.get("TRAIN_BENCH_OUT"):  # a torchrun worker of the communication part
        worker(Path(os.environ["TRAIN_BENCH_OUT"]), int(os.environ["TRAIN_BENCH_STEPS"]),
               float(os.environ["TRAIN_BENCH_OUTER_LR"]))
        return
    print(f"load average: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="granary-train-bench-") as tmp:
        home = Path(tmp)
        os.environ["GRANARY_HOME"] = str(home)
        make_data(home)
        rows: list[tuple[str, Any]] = [] if args.only_dist else single_process_rows(home, args.steps)
        if args.async_ckpt_steps:
            med, per, held = async_checkpoint_cost(home, args.async_ckpt_steps, args.async_ckpt_rounds)
            rows.append((f"wall time, async checkpoint every 50 / none ({args.async_ckpt_steps} steps; rounds "
                         f"{', '.join(f'{x:.3f}' for x in per)}; target < 1.05)", med))
            rows.append((f"training-thread ms per async save (median of {len(held)}; max)",
                         f"{statistics.median(held) * 1e3:.1f}; {max(held) * 1e3:.1f}"))
        if not args.skip_dist:
            out = home / "comm.json"
            torchrun(home, [__file__, "--nproc-per-node", "2"],
                     env={"TRAIN_BENCH_OUT": str(out), "TRAIN_BENCH_STEPS": str(max(args.steps, 100)),
                          "TRAIN_BENCH_OUTER_LR": str(args.diloco_outer_lr)})
            comm = json.loads(out.read_text())
            full = comm["allreduce"]["bytes_per_step"]
            for name in ("allreduce", "powersgd", "diloco", "diloco_async"):
                rows.append((f"{name}: bytes/step per rank, reduction, final loss, run s, median step s",
                             f"{comm[name]['bytes_per_step']:,.0f}  "
                             f"{full / max(comm[name]['bytes_per_step'], 1):.1f}x  {comm[name]['final_loss']:.4f}  "
                             f"{comm[name]['seconds']:.1f}  {comm[name]['step_s']:.4f}"))
            rows.append(("diloco_async (delay 5) final loss / diloco final loss",
                         comm["diloco_async"]["final_loss"] / comm["diloco"]["final_loss"]))
            rows.append(("diloco final loss / all-reduce final loss (target <= 1.05)",
                         comm["diloco"]["final_loss"] / comm["allreduce"]["final_loss"]))
            if not args.no_recovery:
                rows.append(("seconds from kill -9 of a rank to the first step after resume (target < 15)",
                             recovery(home)))
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value:,.3f}" if isinstance(value, float) else f"{label:<{width}}  {value}")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
