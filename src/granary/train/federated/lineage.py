"""A federated run's lineage, and its global model published as a checkpoint version carrying that lineage.

The lineage names every site that took part (its dataset, the version it trained on, the rounds its update was
aggregated in, the privacy budget it charged to its own ledger), the sites that refused and why, how the rounds
were aggregated and protected, and the client-level DP guarantee (epsilon from the accountant, delta, noise).
It holds no sample ids: the samples never leave the sites (each site's audit log has a ``fed.round`` record per
round). Publishing goes through the coordinator's store (``CheckpointManager``: authorised, audited commit), so
``granary lineage`` and ``granary show`` read it like any checkpoint's.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from granary.train.federated.config import FedConfig

log = logging.getLogger(__name__)


def federated_lineage(cfg: FedConfig, *, rounds: list[dict[str, Any]], sites: dict[str, dict[str, Any]],
                      refused: dict[str, str], dp: dict[str, Any] | None) -> dict[str, Any]:
    """The lineage of the model a run made (``rounds``: the strategy's round reports; ``sites``: what each said)."""
    from granary.train.lineage import code_hash

    ok = [r for r in rounds if r.get("status") == "ok"]
    rows = []
    for name, info in sorted(sites.items()):
        rows.append({"site": name, "dataset": info.get("dataset"), "version": info.get("version"),
                     "rounds": [int(r["round"]) for r in ok if name in r.get("sites", ())],
                     "charged_epsilon": info.get("charged_epsilon"), "charged_delta": info.get("charged_delta")})
    privacy = None
    if dp is not None:
        privacy = {"mechanism": "fed-client-dp", "accountant": "rdp", "unit": "one site's participation",
                   "epsilon": dp["epsilon"], "target_epsilon": dp["target_epsilon"], "delta": dp["delta"],
                   "noise_multiplier": dp["noise_multiplier"], "norm_bound": cfg.norm_bound, "rounds": dp["rounds"],
                   "charged": {r["site"]: {"dataset": r["dataset"], "epsilon": r["charged_epsilon"],
                                           "delta": r["charged_delta"]} for r in rows if r["charged_epsilon"]}}
    return {
        "kind": "federated",
        "run": cfg.name,
        "step": len(ok),
        "data": {"refs": [f"{r['site']}:{r['dataset']}@{r['version']}" for r in rows],
                 "versions": [r["version"] for r in rows], "purpose": cfg.purpose},
        "sites": rows,
        "refused": dict(refused),
        "federation": {"strategy": cfg.strategy, "aggregation": cfg.aggregation, "secure": cfg.secure,
                       "secagg_threshold": cfg.secagg_threshold, "norm_bound": cfg.norm_bound,
                       "rounds_planned": cfg.rounds, "rounds_ok": len(ok), "local_steps": cfg.local_steps,
                       "batch_size": cfg.batch_size},
        "privacy": privacy,
        "code": code_hash(),
    }


def publish(cfg: FedConfig, weights: list[np.ndarray], lineage: dict[str, Any], *, dataset: str,
            store: Any = None) -> str:
    """Commit the global model as a version of checkpoint dataset ``dataset``; returns the version id."""
    import torch

    from granary.train.checkpoint import CheckpointManager
    from granary.train.dist import Dist
    from granary.train.model import GPT

    if store is None:
        from granary.store import open_store

        store = open_store()
    names = list(GPT(cfg.model).state_dict())
    state = {n: torch.from_numpy(np.array(a)) for n, a in zip(names, weights, strict=True)}
    ckpt = CheckpointManager(store, dataset, dist=Dist(), purpose=cfg.purpose)
    ckpt.ensure_dataset(description=f"global model of federated run {cfg.name}")
    meta = {"run": cfg.name, "model": cfg.to_dict()["model"], "federated": cfg.to_dict(),
            "privacy": lineage["privacy"], "sites": [s["site"] for s in lineage["sites"]]}
    vid = ckpt.save(int(lineage["step"]), {"model": state}, extra={}, metadata=meta, lineage=lineage)
    log.info("federated run %s: model published as %s@%s", cfg.name, dataset, vid[:12])
    return vid
