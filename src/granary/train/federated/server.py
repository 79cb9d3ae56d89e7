"""The coordinator: runs the Flower server with the Granary strategy and writes the run's result and model.

The coordinator holds no data. It writes ``result.json`` (per-round status, accepted/rejected/dropped sites,
bytes received, train loss, seconds; the refusals, the DP epsilon and the run's lineage) and ``model.pt`` (the
final global weights as a state dict) into ``out_dir``; with ``publish`` set it also commits the model, with its
lineage, as a checkpoint version of its own store (:mod:`granary.train.federated.lineage`). :func:`server_job`
makes the scheduler job that runs it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from granary.train.federated.config import FedConfig

log = logging.getLogger(__name__)


def run_server(cfg: FedConfig, out_dir: str | Path, *, he_public: bytes | None = None) -> dict[str, Any]:
    """Serve ``cfg.rounds`` rounds at ``cfg.address``; returns (and writes) the run's result."""
    try:
        import flwr as fl
    except ImportError:
        from granary.errors import MissingDependencyError

        raise MissingDependencyError("flwr", "privacy") from None
    import torch

    from granary.train.federated.lineage import federated_lineage, publish
    from granary.train.federated.strategy import build_strategy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    strategy = build_strategy(cfg, he_public=he_public)
    t0 = time.perf_counter()
    fl.server.start_server(server_address=cfg.address, strategy=strategy, grpc_max_message_length=1 << 30,
                           config=fl.server.ServerConfig(num_rounds=cfg.rounds, round_timeout=cfg.round_timeout_s))
    seconds = time.perf_counter() - t0
    from granary.train.model import GPT

    names = list(GPT(cfg.model).state_dict())
    torch.save({n: torch.from_numpy(a.copy()) for n, a in zip(names, strategy.weights, strict=True)},
               out / "model.pt")
    result: dict[str, Any] = {
        "run": cfg.name, "config": cfg.to_dict(), "seconds": seconds, "rounds": strategy.rounds,
        "refused": strategy.refused, "ok": len(strategy.rounds) == cfg.rounds
        and all(r.get("status") == "ok" for r in strategy.rounds),
        "bytes_received": sum(int(r.get("bytes_received", 0)) for r in strategy.rounds),
    }
    if strategy.site_stats is not None:
        result["site_stats"] = strategy.site_stats
    if cfg.dp_epsilon is not None:
        from granary.train.federated.aggregate import dp_spent

        done = sum(1 for r in strategy.rounds if r.get("status") == "ok")
        result["dp"] = {"noise_multiplier": strategy.noise, "delta": cfg.dp_delta, "rounds": done,
                        "epsilon": dp_spent(strategy.noise, cfg.dp_delta, done) if done else 0.0,
                        "target_epsilon": cfg.dp_epsilon}
    result["lineage"] = federated_lineage(cfg, rounds=strategy.rounds, sites=strategy.site_info,
                                          refused=strategy.refused, dp=result.get("dp"))
    if cfg.publish and result["ok"]:  # a failed run's weights are not a model anyone should pick up
        vid = publish(cfg, strategy.weights, result["lineage"], dataset=cfg.publish)
        result["published"] = {"dataset": cfg.publish, "version": vid, "ref": f"{cfg.publish}@{vid}"}
    (out / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    return result


def server_job(config_path: str | Path, out_dir: str | Path, *, name: str = "fed-server",
               he_context: str | None = None, env: dict[str, str] | None = None, publish: str | None = None) -> Any:
    """A scheduler :class:`granary.sched.model.JobSpec` running the coordinator (``granary fed server``)."""
    from granary.sched.model import JobSpec

    cmd = [sys.executable, "-m", "granary.cli.main", "fed", "server", str(Path(config_path).resolve()),
           "--out", str(Path(out_dir).resolve())]
    if he_context:
        cmd += ["--he-context", str(Path(he_context).resolve())]
    if publish:
        cmd += ["--publish", publish]
    job_env = {k: v for k, v in os.environ.items() if k == "GRANARY_HOME"}
    return JobSpec(name=name, command=tuple(cmd), cpus_per_replica=1.0, env={**job_env, **(env or {})})
