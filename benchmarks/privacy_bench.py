"""Privacy benchmark: federated vs centralised training, secure-aggregation overhead, DP-SGD cost, in one run.

    .venv/bin/python benchmarks/privacy_bench.py [--rounds 20] [--local-steps 2] [--strategy fedadam] [--dp-steps 60]

1. Federated: 4 sites, each its own Granary home holding a non-IID tokens version (each site's documents are
   arithmetic token sequences with its own stride), FedAvg over real processes (Flower), against centralised
   training of the same model on the union of the same data for the same number of samples. Both are scored on a
   held-out version that mixes all four strides. Target: federated held-out loss within 10% of centralised.
2. Secure aggregation: the same federated run in plain, masked (Shamir-shared masks) and CKKS modes (seconds per
   round, bytes through the coordinator per round, shares and unmasking answers included) and, in process, the cost
   of protecting one update of the model's size (share keys + mask + unmask, with 0 and 1 dropouts; encrypt + add +
   decrypt) against plain summation; the protected sums are checked against the plain one.
3. DP-SGD at epsilon 8 (Opacus) against the same recipe without privacy (a larger version of the same four
   strides, batch 256: DP needs many samples per step): held-out loss gap and samples/second.

Writes benchmarks/out/privacy_bench.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from granary.config import Settings
from granary.store import open_store
from granary.train.federated import FedConfig, SiteConfig
from granary.train.federated.local import run_local
from granary.train.recipe import ModelConfig, recipe_from_dict

OUT = Path(__file__).resolve().parent / "out"
STRIDES = (1, 3, 7, 11)
MODEL = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, context=32)


def docs(stride: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [((rng.integers(0, 256) + stride * np.arange(rng.integers(40, 120))) % 256).astype(np.uint16)
            for _ in range(n)]


def write(home: Path, name: str, documents: list[np.ndarray]) -> None:
    store = open_store(Settings.from_env(home=home))
    store.create_dataset(name, kind="tokens")
    with store.transaction(name) as txn:
        txn.write_tokens(iter(documents), shard_tokens=20000)
        txn.commit(message=name)


def held_out_loss(home: Path, weights: dict[str, torch.Tensor], batches: int = 20) -> float:
    from granary.stream import StreamingDataset
    from granary.train.model import GPT, loss_fn

    model = GPT(MODEL)
    model.load_state_dict(weights)
    model.eval()
    ds = StreamingDataset("heldout", batch_size=16, seq_len=MODEL.context + 1, shuffle="none", rank=0, world_size=1,
                          store=open_store(Settings.from_env(home=home)))
    total, n = 0.0, 0
    with torch.no_grad():
        for i, b in enumerate(ds):
            if i >= batches:
                break
            t = b["tokens"]
            total, n = total + float(loss_fn(model(t[:, :-1]), t[:, 1:])), n + 1
    return total / n


def setup(root: Path, docs_per_site: int) -> tuple[list[SiteConfig], Path]:
    central = root / "central"
    union: list[np.ndarray] = []
    sites = []
    for k, stride in enumerate(STRIDES):
        d = docs(stride, docs_per_site, seed=k)
        union += d
        write(root / f"site-{k}", "tok", d)
        sites.append(SiteConfig(name=f"site{k}", dataset="tok", home=str(root / f"site-{k}"), seed=k))
    rng = np.random.default_rng(99)
    write(central, "all", [union[i] for i in rng.permutation(len(union))])
    write(central, "heldout", [d for s in STRIDES for d in docs(s, 25, seed=1000 + s)])
    return sites, central


def federated(cfg: FedConfig, sites: list[SiteConfig], out: Path, **kw: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = run_local(cfg, sites, out, timeout_s=900, **kw)
    if run.server_code != 0 or not run.result.get("ok"):
        raise SystemExit(f"federated run {cfg.name} failed:\n{run.logs['server'][-3000:]}")
    rounds = run.result["rounds"]
    return {"wall_s": time.perf_counter() - t0, "server_s": run.result["seconds"],
            # round 1 also pays each site's first loader open: timings average the later rounds when there are any
            "round_s": float(np.mean([r["seconds"] for r in (rounds[1:] or rounds)])),
            # masked rounds also move Shamir shares (routed) and unmasking answers: counted with the updates
            "bytes_per_round": float(np.mean([r["bytes_received"] + r.get("secagg_bytes", 0) for r in rounds])),
            "weights": torch.load(out / "model.pt")}


def train_central(central: Path, root: Path, *, name: str, steps: int, batch: int, lr: float,
                  dp: Any = None, dataset: str = "all") -> Any:
    """The recipe's model trained in one process on the union of the sites' data (DP-SGD when ``dp``)."""
    from granary.train.dp import fit_private

    recipe = recipe_from_dict({
        "name": name, "steps": steps, "seed": 0, "run_dir": str(root / name), "model": dataclasses.asdict(MODEL),
        "data": {"dataset": dataset, "batch_size": batch}, "optim": {"lr": lr, "schedule": "constant"},
    })
    return fit_private(recipe, dp, store=open_store(Settings.from_env(home=central)), save=False)


def protect_costs(size: int, clients: int = 4) -> dict[str, Any]:
    from granary.secure import he, secagg
    from granary.secure.secagg_server import SecAggServer

    rng = np.random.default_rng(0)
    ups = [rng.normal(0, 0.01, size) for _ in range(clients)]
    t0 = time.perf_counter()
    plain = np.sum(ups, axis=0)
    plain_s = time.perf_counter() - t0
    from granary.secure import shamir

    shamir.split(bytes(16), threshold=2, holders=2)  # import pycryptodome before timing
    mask: dict[str, Any] = {}
    for drop in (0, 1):  # every client sends; the last one masks, then drops (its masks are recovered from shares)
        t0 = time.perf_counter()
        cs = [secagg.SecAggClient(f"s{i}", "bench") for i in range(clients)]
        keys = {c.name: c.public_keys() for c in cs}
        server = SecAggServer(keys, size, round_id="bench")
        for c in cs:
            server.add_shares(c.name, c.share_keys(keys, threshold=server.threshold))
        t1 = time.perf_counter()
        for i, (c, u) in enumerate(zip(cs, ups, strict=True)):
            y = c.mask(u, server.shares_for(c.name))
            if i < clients - drop:
                server.add(c.name, y)
        t2 = time.perf_counter()
        answers = {c.name: c.unmask(server.survivors, server.dropped) for c in cs[:clients - drop]}
        total = server.unmask(answers)
        t3 = time.perf_counter()
        answer_bytes = sum(len(b) for a in answers.values() for _, b in a.values())
        mask[f"drop{drop}"] = {"shares_s": t1 - t0, "mask_s": t2 - t1, "unmask_s": t3 - t2, "total_s": t3 - t0,
                               "threshold": server.threshold,
                               "share_bytes_per_client": server.share_bytes / clients,
                               "unmask_bytes_per_survivor": answer_bytes / (clients - drop),
                               "max_abs_error": float(np.max(np.abs(total - np.sum(ups[:clients - drop], axis=0))))}
    mask_s = mask["drop0"]["total_s"]
    secret = he.new_context()
    sec, pub = he.load_context(secret), he.load_context(he.public_context(secret))
    t0 = time.perf_counter()
    blobs = [he.encrypt(sec, u) for u in ups]
    enc_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    total = he.add(pub, blobs)
    add_s = time.perf_counter() - t1
    t1 = time.perf_counter()
    ckks = he.decrypt(sec, total, size)
    dec_s = time.perf_counter() - t1
    return {"params": size, "clients": clients, "plain_sum_s": plain_s, "mask_s": mask_s,
            "ckks_encrypt_s": enc_s, "ckks_add_s": add_s, "ckks_decrypt_s": dec_s,
            "mask_shamir": mask, "mask_time_ratio_vs_plain_sum": mask_s / plain_s,
            "bytes_plain_per_client": size * 4,
            "bytes_mask_per_client": size * 8 + mask["drop0"]["share_bytes_per_client"]
            + mask["drop0"]["unmask_bytes_per_survivor"],
            "bytes_ckks_per_client": len(blobs[0]),
            "mask_max_abs_error": mask["drop0"]["max_abs_error"],
            "ckks_max_abs_error": float(np.max(np.abs(ckks - plain)))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--local-steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=6e-3, help="site (and centralised) AdamW learning rate")
    ap.add_argument("--strategy", default="fedadam")
    ap.add_argument("--server-lr", type=float, default=0.012)
    ap.add_argument("--docs", type=int, default=150, help="documents per site")
    ap.add_argument("--dp-docs", type=int, default=1000, help="documents per stride for the DP-SGD runs")
    ap.add_argument("--dp-steps", type=int, default=60)
    ap.add_argument("--dp-batch", type=int, default=256)
    ap.add_argument("--secure-rounds", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="privacy-bench-"))
    try:
        report = run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "privacy_bench.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    sites, central = setup(root, args.docs)
    base = FedConfig(name="bench", rounds=args.rounds, min_clients=4, expected_clients=4, strategy=args.strategy,
                     server_lr=args.server_lr,
                     local_steps=args.local_steps, batch_size=args.batch, lr=args.lr, address="127.0.0.1:0",
                     model=MODEL, round_timeout_s=300)
    fed = federated(base, sites, root / "fed")
    samples = args.rounds * args.local_steps * args.batch * len(sites)
    cen = train_central(central, root, name="central", steps=args.rounds * args.local_steps,
                        batch=args.batch * len(sites), lr=args.lr)
    fed_loss, cen_loss = held_out_loss(central, fed["weights"]), held_out_loss(central, cen.model.state_dict())
    report: dict[str, Any] = {"federated": {
        "sites": len(sites), "samples": samples, "rounds": args.rounds, "held_out_loss_federated": fed_loss,
        "held_out_loss_centralised": cen_loss, "ratio": fed_loss / cen_loss, "within_10pct": fed_loss <= 1.1 * cen_loss,
        "federated_wall_s": fed["wall_s"], "centralised_train_loss": cen.final_loss}}
    # secure aggregation over real processes: same sites, a few rounds each
    from granary.secure import he

    secret = root / "ctx"
    secret.write_bytes(he.new_context())
    (root / "ctx.pub").write_bytes(he.public_context(secret.read_bytes()))
    modes: dict[str, Any] = {}
    for mode in ("none", "mask", "ckks"):
        cfg = dataclasses.replace(base, name=f"sec-{mode}", rounds=args.secure_rounds, secure=mode)
        ss = [dataclasses.replace(s, he_context=str(secret)) for s in sites] if mode == "ckks" else sites
        r = federated(cfg, ss, root / f"sec-{mode}", he_public=str(root / "ctx.pub") if mode == "ckks" else None)
        modes[mode] = {k: r[k] for k in ("round_s", "bytes_per_round", "server_s")}
    for mode in ("mask", "ckks"):
        modes[mode]["time_ratio_vs_plain"] = modes[mode]["round_s"] / modes["none"]["round_s"]
        modes[mode]["bytes_ratio_vs_plain"] = modes[mode]["bytes_per_round"] / modes["none"]["bytes_per_round"]
    size = sum(v.numel() for v in fed["weights"].values())
    report["secure_aggregation"] = {"rounds_over_processes": modes, "one_update": protect_costs(size)}
    report["dp_sgd"] = dp_report(central, root, args)
    return report


def dp_report(central: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from granary.secure.dp import PrivateStats
    from granary.secure.guard import Guard
    from granary.secure.settings import SecureSettings
    from granary.train.dp import DPConfig

    write(central, "dp-all", [d for k, s in enumerate(STRIDES) for d in docs(s, args.dp_docs, seed=500 + k)])
    store = open_store(Settings.from_env(home=central))
    PrivateStats(Guard(store.catalog, SecureSettings.from_env(central))).set_budget("dp-all", epsilon=100.0,
                                                                                    delta=1e-3)
    out: dict[str, Any] = {}
    for label, dp in (("plain", None), ("dp", DPConfig(epsilon=8.0, delta=1e-5, max_grad_norm=1.0))):
        res = train_central(central, root, name=f"dpsgd-{label}", steps=args.dp_steps, batch=args.dp_batch, lr=1e-2,
                            dp=dp, dataset="dp-all")
        out[label] = {"held_out_loss": held_out_loss(central, res.model.state_dict()), "final_train_loss":
                      res.final_loss, "samples_per_second": res.samples_per_second, "epsilon": res.epsilon,
                      "noise_multiplier": res.noise_multiplier}
    out["samples"] = res.privacy.get("sample_rate") and round(args.dp_batch / res.privacy["sample_rate"])
    out["loss_gap"] = out["dp"]["held_out_loss"] - out["plain"]["held_out_loss"]
    out["loss_ratio"] = out["dp"]["held_out_loss"] / out["plain"]["held_out_loss"]
    out["throughput_ratio"] = out["dp"]["samples_per_second"] / out["plain"]["samples_per_second"]
    if out["dp"]["epsilon"] is None or out["dp"]["epsilon"] > 8.0 + 1e-9 or not math.isfinite(out["loss_gap"]):
        raise SystemExit(f"DP-SGD run out of bounds: {out}")
    return out


if __name__ == "__main__":
    main()
