"""`granary train` (a run through torchrun's elastic agent) and `granary lineage`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from granary.cli.output import console, print_json, table

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def train(
    target: Annotated[Path, typer.Argument(help="A recipe (.yaml) or a training script (.py).")],
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", help="Worker processes on this node.")] = 1,
    nnodes: Annotated[str, typer.Option("--nnodes", help="Nodes, N or MIN:MAX (elastic).")] = "1",
    rdzv_endpoint: Annotated[str | None, typer.Option("--rdzv-endpoint", help="HOST:PORT where nodes meet.")] = None,
    rdzv_id: Annotated[str | None, typer.Option("--rdzv-id", help="Job id shared by the nodes.")] = None,
    max_restarts: Annotated[int, typer.Option("--max-restarts", help="Restarts of all workers after a failure.")]
    = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the torchrun arguments and stop.")] = False,
    dp_epsilon: Annotated[float | None, typer.Option("--dp-epsilon", help="Train with DP-SGD (Opacus) to this "
                                                     "epsilon over the run, charged to the dataset's budget.")]
    = None,
    dp_delta: Annotated[float, typer.Option("--dp-delta", help="DP-SGD delta.")] = 1e-5,
    dp_max_grad_norm: Annotated[float, typer.Option("--dp-max-grad-norm", help="DP-SGD per-sample clipping norm.")]
    = 1.0,
    script_args: Annotated[list[str] | None, typer.Argument(help="Arguments passed to a .py script.")] = None,
) -> None:
    """Train: run a recipe or script on torchrun (restarts resume from the newest checkpoint in the store)."""
    if dp_epsilon is not None:
        _train_private(target, nproc_per_node, dp_epsilon, dp_delta, dp_max_grad_norm)
        return
    from granary.train.launch import exit_now, launch, torchrun_args

    args = torchrun_args(target, nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                         rdzv_id=rdzv_id, max_restarts=max_restarts, script_args=script_args)
    if dry_run:
        console.print("torchrun " + " ".join(args))
        return
    exit_now(launch(args))


def _train_private(target: Path, nproc: int, epsilon: float, delta: float, max_grad_norm: float) -> None:
    from granary.errors import TrainError
    from granary.train.dp import DPConfig, fit_private
    from granary.train.recipe import load_recipe

    if target.suffix not in (".yaml", ".yml") or nproc != 1:
        raise TrainError("--dp-epsilon trains a recipe (.yaml) in one process",
                         hint="drop --nproc-per-node, and pass a recipe file")
    result = fit_private(load_recipe(target), DPConfig(epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm))
    p = result.privacy
    console.print(table("DP-SGD run", ["field", "value"], [
        ("steps", result.steps), ("final loss", f"{result.final_loss:.4f}"),
        ("epsilon (accountant)", f"{result.epsilon:.3f}"), ("delta", f"{result.delta:g}"),
        ("noise multiplier", f"{p['noise_multiplier']:.3f}"), ("sample rate", f"{p['sample_rate']:.4g}"),
        ("charged to budget", f"{p['charged_epsilon']:.3f}"), ("checkpoint", result.checkpoint[:16]),
    ]))


def lineage(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint: RUN-ckpt, RUN-ckpt@<version> or @tag.")],
    samples: Annotated[bool, typer.Option("--samples", help="List the sample ids each step consumed.")] = False,
    step: Annotated[int | None, typer.Option("--step", help="Only this step's samples.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The data a checkpoint was trained on: versions, seed, steps, samples (and their ids with --samples)."""
    from granary.store import open_store
    from granary.train.lineage import checkpoint_lineage, sample_ids

    store = open_store()
    lin = checkpoint_lineage(store, checkpoint)
    if lin.get("kind") == "federated":
        if samples or step is not None:
            from granary.errors import TrainError

            raise TrainError(f"{checkpoint} was trained by federated run {lin.get('run')!r}: its samples never left "
                             "the sites", hint="each site's audit log has one fed.round record per round "
                             "(`granary audit log --action fed.round` at the site)")
        print_json(lin) if json_out else _federated(checkpoint, lin)
        return
    ids = None
    if samples or step is not None:
        ids = sample_ids(store, lin, steps=range(step, step + 1) if step is not None else None)
    if json_out:
        print_json({**lin, **({"samples": [list(t) for t in ids]} if ids is not None else {})})
        return
    data = lin["data"]
    rows: list[tuple[str, Any]] = [
        ("run", lin.get("run")), ("step", lin.get("step")), ("data", ", ".join(data["refs"])),
        ("versions", ", ".join(v[:16] for v in data["versions"])), ("weights", data["weights"]),
        ("seed / shuffle", f"{data['seed']} / {data['shuffle']}"), ("sample tokens", data["seq_len"]),
        ("samples consumed", f"{lin['samples_consumed']:,}"), ("code", lin["code"][:16]),
    ]
    console.print(table(f"lineage of {checkpoint}", ["field", "value"], rows))
    segs = [(s["first_step"] + 1, s["last_step"], s["first_position"], s["samples_per_step"], s["world_size"])
            for s in lin["segments"]]
    console.print(table("segments (one per attempt)", ["from step", "to step", "first position", "samples/step",
                                                      "ranks"], segs))
    if ids is not None:
        console.print(table("samples", ["step", "source", "sample"], ids))


def _federated(checkpoint: str, lin: dict[str, Any]) -> None:
    fed, dp = lin["federation"], lin.get("privacy")
    rows: list[tuple[str, Any]] = [
        ("run", f"{lin.get('run')} (federated)"), ("purpose", lin["data"].get("purpose")),
        ("rounds", f"{fed['rounds_ok']} of {fed['rounds_planned']}"),
        ("strategy / aggregation", f"{fed['strategy']} / {fed['aggregation']}"), ("secure", fed["secure"]),
        ("client-level DP", f"epsilon {dp['epsilon']:.3f} (target {dp['target_epsilon']:g}) at delta {dp['delta']:g}, "
                            f"noise {dp['noise_multiplier']:.3f}" if dp else "none"),
        ("refused", "; ".join(f"{s}: {r}" for s, r in lin.get("refused", {}).items()) or "none"),
        ("code", lin["code"][:16]),
    ]
    console.print(table(f"lineage of {checkpoint}", ["field", "value"], rows))
    sites = [(s["site"], s["dataset"], (s["version"] or "")[:16], ", ".join(map(str, s["rounds"])),
              f"{s['charged_epsilon']:g}" if s.get("charged_epsilon") else "") for s in lin["sites"]]
    console.print(table("sites", ["site", "dataset", "version", "rounds", "epsilon charged"], sites))


def prune_checkpoints(
    dataset: Annotated[str, typer.Argument(help="A run's checkpoint dataset (RUN-ckpt).")],
    keep_last: Annotated[int, typer.Option("--keep-last", help="Keep this many newest checkpoints (>= 1).")],
    keep_every: Annotated[int, typer.Option("--keep-every", help="Also keep every checkpoint whose step is a "
                                                                 "multiple of this (0: none).")] = 0,
    gc: Annotated[bool, typer.Option("--gc", help="Then free unreferenced objects (`granary gc`).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be retired; change nothing.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Checkpoint retention: retire a run's checkpoints outside --keep-last/--keep-every through the store.

    A checkpoint that is a branch or tag head, or that a live version's lineage names (a registered model), is
    kept whatever the policy says."""
    from granary.errors import TrainError
    from granary.store import open_store
    from granary.train.retention import apply_retention

    if keep_last < 1 or keep_every < 0:
        raise TrainError(f"--keep-last must be >= 1 and --keep-every >= 0 (got {keep_last}, {keep_every})")
    store = open_store()
    out = apply_retention(store, dataset, keep_last=keep_last, keep_every=keep_every, dry_run=dry_run)
    if gc and not dry_run:
        report = store.gc()
        out["gc"] = {"deleted": len(report.deleted), "deleted_bytes": report.deleted_bytes}
    if json_out:
        print_json(out)
        return
    verb = "would retire" if dry_run else "retired"
    console.print(f"{dataset}: kept steps {out['kept_steps']}; {verb} steps {out['retired_steps']}")
    for step, why in sorted(out["protected"].items()):
        console.print(f"  kept {step}: {why}")
    if "gc" in out:
        console.print(f"gc freed {out['gc']['deleted']} objects ({out['gc']['deleted_bytes']:,} bytes)")


def register(app: typer.Typer) -> None:
    """Add the training commands to the app."""
    app.command("train", context_settings={"allow_extra_args": False})(train)
    app.command("lineage")(lineage)
    app.command("prune-checkpoints")(prune_checkpoints)
