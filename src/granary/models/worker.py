"""Entry point of model jobs run by the scheduler: ``python -m granary.models.worker eval|trial|serve ...``."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="granary.models.worker")
    sub = parser.add_subparsers(dest="kind", required=True)
    ev = sub.add_parser("eval", help="compute evaluation shards")
    ev.add_argument("--plan", required=True, help="the EvalPlan as JSON")
    ev.add_argument("--shards", required=True, help="comma-separated shard numbers")
    ev.add_argument("--claims", default=None, help="directory the run's workers claim shards in")
    tr = sub.add_parser("trial", help="run hyperparameter-search trials")
    tr.add_argument("--study", required=True)
    tr.add_argument("--storage", required=True)
    tr.add_argument("--spec", required=True, help="the SearchSpec as JSON")
    tr.add_argument("--budget", type=int, default=None,
                    help="run trials one after another until the study holds this many (default: one trial)")
    sv = sub.add_parser("serve", help="serve a model version over HTTP and register it with the gateway")
    sv.add_argument("--model", required=True, help="name@version")
    sv.add_argument("--served-as", required=True, help="the model name requests carry")
    sv.add_argument("--port", type=int, required=True)
    sv.add_argument("--fail-rate", type=float, default=0.0, help="answer this share of requests with 500 (tests)")
    sv.add_argument("--never-ready", action="store_true", help="never report healthy (tests)")
    sv.add_argument("--purpose", default=None, help="declared purpose of reading the model's files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    torch.set_num_threads(1)
    from granary.store import open_store

    store = open_store()
    if args.kind == "eval":
        from pathlib import Path

        from granary.models.evaluate import read_plan, run_shards

        run_shards(store, read_plan(args.plan), [int(s) for s in args.shards.split(",") if s],
                   claims=Path(args.claims) if args.claims else None)
        return 0
    if args.kind == "trial":
        from granary.models.hpo import run_trial

        return run_trial(store, study=args.study, storage=args.storage, spec_json=args.spec, budget=args.budget)
    from granary.models.server import serve

    return serve(store, args.model, served_as=args.served_as, port=args.port, fail_rate=args.fail_rate,
                 never_ready=args.never_ready, purpose=args.purpose)


if __name__ == "__main__":  # pragma: no cover - run as a scheduler job
    sys.exit(main())
