"""How long an asynchronous checkpoint save holds the training thread: ``CheckpointManager.save`` alone, in one
process, on the train_bench model's state (GPT d 64, AdamW moments), with ``--gap-s`` of idle time between saves
(the training that would go on meanwhile).

    python benchmarks/ckpt_stall_bench.py [--saves 8] [--gap-s 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import MODEL


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--saves", type=int, default=8)
    ap.add_argument("--gap-s", type=float, default=1.0)
    args = ap.parse_args()
    import torch
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from granary.config import Settings
    from granary.store import open_store
    from granary.train.checkpoint import CheckpointManager
    from granary.train.dist import Dist
    from granary.train.model import GPT
    from granary.train.recipe import ModelConfig

    print(f"load average: {os.getloadavg()}")
    torch.set_num_threads(2)
    model = GPT(ModelConfig(**MODEL))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(2, 8, dtype=torch.long)).sum().backward()
    opt.step()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Settings.from_env(home=Path(tmp)))
        mgr = CheckpointManager(store, "stall-ckpt", dist=Dist(), async_save=True)
        mgr.ensure_dataset()
        held = []
        for i in range(args.saves):
            msd, osd = get_state_dict(model, opt)
            t0 = time.perf_counter()
            mgr.save(i + 1, {"model": msd, "optim": osd}, extra={"rng": torch.get_rng_state()}, metadata={},
                     lineage={})
            held.append(time.perf_counter() - t0)
            time.sleep(args.gap_s)
        t0 = time.perf_counter()
        mgr.finish()
        last = time.perf_counter() - t0
        versions = len(store.log("stall-ckpt"))
    later = held[1:]  # the first save also allocates
    print(f"training-thread ms per async save: median {statistics.median(later) * 1e3:.1f}, max "
          f"{max(later) * 1e3:.1f}, first {held[0] * 1e3:.1f}; final wait {last * 1e3:.1f} ms; {versions} versions")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
