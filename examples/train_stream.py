"""Train a tiny model with two ranks on CPU (torchrun + gloo) from the Granary loader, checkpoint, resume in new
processes, and check that the resumed run saw exactly the samples (and reached exactly the losses) of an
uninterrupted run.

Self-check (builds a small tokens dataset in a temporary home, then runs torchrun twice: an uninterrupted run
that also checkpoints at step 5, and a second job that resumes from that checkpoint; with --stop the first job
stops at the checkpoint and a third job runs uninterrupted for the reference):
    python examples/train_stream.py --self-check [--stop] [--workers N]

One rank of a run (what torchrun launches):
    torchrun --nproc_per_node 2 examples/train_stream.py --home H --ref toks --steps 12 --trace run.jsonl \
        [--checkpoint-at 5 --checkpoint ckpt [--stop]] [--resume ckpt]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SEQ, BATCH, VOCAB = 32, 4, 512


def train(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from granary.config import Settings
    from granary.store import open_store
    from granary.stream import StreamingDataset, StreamingLoader

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    store = open_store(Settings.from_env(home=Path(args.home)))
    ds = StreamingDataset(args.ref, batch_size=BATCH, seq_len=SEQ, seed=1234, store=store)  # rank from dist
    loader = StreamingLoader(ds, num_workers=args.workers)
    model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Embedding(VOCAB, 16), torch.nn.Linear(16, VOCAB)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = 0
    if args.resume:
        ckpt = torch.load(Path(args.resume) / "ckpt.pt", weights_only=False)
        model.module.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        loader.load_state_dict(ckpt["loader"])
        step = ckpt["step"]
    log = open(f"{args.trace}.rank{rank}", "a")  # noqa: SIM115 - closed in the finally below
    try:
        while step < args.steps:
            batches = iter(loader)
            try:
                for batch in batches:
                    tokens = batch["tokens"] % VOCAB
                    logits = model(tokens[:, :-1])
                    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    step += 1
                    digest = hashlib.sha256(batch["tokens"].numpy().tobytes()).hexdigest()[:16]
                    log.write(json.dumps({"step": step, "rank": rank, "batch": digest,
                                          "loss": round(loss.item(), 6)}) + "\n")
                    if args.checkpoint_at and step == args.checkpoint_at:
                        if rank == 0:
                            Path(args.checkpoint).mkdir(parents=True, exist_ok=True)
                            torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(),
                                        "loader": loader.state_dict(), "step": step},
                                       Path(args.checkpoint) / "ckpt.pt")
                        dist.barrier()
                        if args.stop:
                            return
                    if step >= args.steps:
                        break
            finally:
                batches.close()  # type: ignore[attr-defined]  # a generator: ends the pass's readers now
        dist.barrier()  # no rank tears down gloo while another still talks to it
    finally:
        log.close()
        # Release what holds the process group (DDP's reducer) while torch is whole, then the group itself:
        # left to interpreter exit, its native threads are torn down in an undefined order.
        del model, opt
        gc.collect()
        dist.destroy_process_group()


def self_check(workers: int, stop: bool) -> int:
    import numpy as np

    from granary.config import Settings
    from granary.store import open_store

    with tempfile.TemporaryDirectory(prefix="granary-train-") as tmp:
        home = Path(tmp) / "home"
        store = open_store(Settings.from_env(home=home))
        store.create_dataset("toks", kind="tokens")
        rng = np.random.default_rng(0)
        with store.transaction("toks") as txn:
            txn.write_tokens([rng.integers(0, VOCAB, int(rng.integers(20, 200))).astype(np.uint16)
                              for _ in range(60)], dtype="uint16", shard_tokens=2000)
            txn.commit(message="example tokens")
        base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + os.getpid() % 1000), __file__, "--home", str(home), "--ref", "toks", "--steps", "14",
                "--workers", str(workers)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        full, part = Path(tmp) / "full.jsonl", Path(tmp) / "part.jsonl"
        ckpt = Path(tmp) / "ckpt"
        first = ["--checkpoint-at", "5", "--checkpoint", str(ckpt)]
        runs = [["--trace", str(full), *first], ["--trace", str(part), "--resume", str(ckpt)]]
        if stop:  # the first job really stops at step 5; a separate job gives the uninterrupted reference
            runs = [["--trace", str(part), *first, "--stop"], ["--trace", str(part), "--resume", str(ckpt)],
                    ["--trace", str(full)]]
        for extra in runs:
            out = subprocess.run(base + extra, env=env, capture_output=True, text=True)
            if out.returncode:
                sys.stderr.write(out.stdout[-4000:] + out.stderr[-8000:])
                print(f"FAILED: torchrun {' '.join(extra)} exited with {out.returncode}")
                return 1
        ok = True
        for rank in (0, 1):
            a = Path(f"{full}.rank{rank}").read_text().splitlines()
            b = Path(f"{part}.rank{rank}").read_text().splitlines()
            b = b if stop else a[:5] + b
            same = a == b and len(a) == 14
            ok &= same
            print(f"rank {rank}: {len(a)} steps uninterrupted, {len(b)} with a restart at step 5: "
                  f"{'identical batches and losses' if same else 'MISMATCH'}")
        print("OK" if ok else "FAILED")
        return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self-check", action="store_true")
    parser.add_argument("--home")
    parser.add_argument("--ref", default="toks")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank")
    parser.add_argument("--trace")
    parser.add_argument("--checkpoint-at", type=int, default=0)
    parser.add_argument("--stop", action="store_true", help="stop after checkpointing")
    parser.add_argument("--checkpoint")
    parser.add_argument("--resume")
    args = parser.parse_args()
    if args.self_check:
        sys.exit(self_check(args.workers, args.stop))
    train(args)


if __name__ == "__main__":
    main()
