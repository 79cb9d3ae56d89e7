"""`granary model ...` (registry, cards, compression, distillation), `granary eval`, `granary tune`,
`granary deploy` and `granary undeploy`: thin over :mod:`granary.models`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from granary.cli.common import PurposeOpt, read_store
from granary.cli.output import console, print_json, table

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
model_app = typer.Typer(help="The model registry: register, show, alias, card, compress, distill, compare.")


def _registry(purpose: str | None = None) -> Any:
    from granary.models.registry import Registry

    return Registry(read_store(purpose))


def _read_mapping(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    import yaml

    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold a mapping")
    return data


def _version_row(mv: Any, aliases: dict[str, int]) -> tuple[Any, ...]:
    names = ",".join(sorted(a for a, v in aliases.items() if v == mv.version))
    return (mv.ref, mv.method, mv.parent or "", mv.facts.get("size_bytes"), names,
            (mv.facts.get("checkpoint") or {}).get("dataset", ""))


@model_app.command("register")
def register_cmd(
    checkpoint: Annotated[str, typer.Argument(help="A training checkpoint: RUN-ckpt or RUN-ckpt@<version>.")],
    name: Annotated[str, typer.Option("--name", help="The model's name (a new version is added).")],
    arch: Annotated[Path | None, typer.Option("--arch", help="YAML/JSON of the declared architecture "
                                                             "(default: the run's own).")] = None,
    description: Annotated[str, typer.Option(help="Free text kept with the version.")] = "",
    purpose: PurposeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register a checkpoint as a model version (shapes checked; safetensors and HF layout exported)."""
    mv = _registry(purpose).register(checkpoint, name, arch=_read_mapping(arch), purpose=purpose,
                                     description=description)
    if json_out:
        print_json(mv.__dict__)
        return
    console.print(table(f"registered {mv.ref}", ["version", "method", "parent", "bytes", "aliases", "checkpoint"],
                        [_version_row(mv, {})]))


@model_app.command("list")
def list_cmd(name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
             json_out: JsonOpt = False) -> None:
    """Models and their versions, with aliases."""
    reg = _registry()
    rows = []
    for n in [name] if name else reg.models():
        aliases = reg.aliases(n)
        rows += [(mv, aliases) for mv in reg.versions(n)]
    if json_out:
        print_json([{**mv.__dict__, "aliases": sorted(a for a, v in al.items() if v == mv.version)}
                    for mv, al in rows])
        return
    console.print(table("models", ["version", "method", "parent", "bytes", "aliases", "checkpoint"],
                        [_version_row(mv, al) for mv, al in rows]))


@model_app.command("show")
def show_cmd(ref: Annotated[str, typer.Argument(help="name, name@N or name@alias.")],
             json_out: JsonOpt = False) -> None:
    """A version's lineage back to raw data, licenses and purposes, evaluations, deployments."""
    from granary.models.card import model_facts

    facts = model_facts(_registry(), ref)
    if json_out:
        print_json(facts)
        return
    a = facts["arch"] or {}
    p = facts["policy"]
    console.print(table(f"model {facts['model']}", ["field", "value"], [
        ("method", facts["method"]), ("aliases", ", ".join(facts["aliases"]) or "-"),
        ("architecture", f"{a.get('n_layers')}x{a.get('d_model')} ctx {a.get('context')} vocab {a.get('vocab_size')}"),
        ("bytes", facts["size_bytes"]), ("tokens trained", facts["tokens_trained"]),
        ("licenses", ", ".join(p["licenses"]) or "-"),
        ("purposes", "unrestricted" if p["purposes"] is None else ", ".join(p["purposes"])),
        ("conflicts", "; ".join(p["conflicts"]) or "-")]))
    nodes = {n["id"]: n for n in facts["lineage"]["nodes"]}
    console.print(table("lineage (derived <- source)", ["version", "dataset", "kind", "made by", "source", "rows"],
                        [(nodes[a]["id"][:16], nodes[a]["dataset"], nodes[a]["kind"], nodes[a]["made_by"],
                          f"{nodes[b]['dataset']}@{b[:12]}", nodes[b].get("rows"))
                         for a, b in facts["lineage"]["edges"]]))
    if facts["evaluations"]:
        console.print(table("evaluations", ["data", "perplexity", "accuracy", "tokens"],
                            [(e["data"], f"{e['perplexity']:.4f}", f"{e['accuracy']:.4f}", int(e["tokens"]))
                             for e in facts["evaluations"]]))
    if facts["deployments"]:
        console.print(table("deployments", ["version", "served as", "replicas", "state"],
                            [(d["version"], d["served_as"], d["replicas"], d["state"]) for d in facts["deployments"]]))


@model_app.command("alias")
def alias_cmd(
    ref: Annotated[str, typer.Argument(help="The version: name@N.")],
    alias: Annotated[str, typer.Argument(help="The alias to move, e.g. staging or production.")],
    override: Annotated[str | None, typer.Option(help="Reason for promoting against data policy (audited).")] = None,
    gate_data: Annotated[str | None, typer.Option("--gate-data", help="Block the move if the version regresses "
                                                                      "on this tokens version.")] = None,
    gate_metric: Annotated[str, typer.Option(help="Gate metric (perplexity, loss, accuracy).")] = "perplexity",
    gate_max_change: Annotated[float, typer.Option(help="Allowed relative worsening (0.01 = 1%).")] = 0.01,
    json_out: JsonOpt = False,
) -> None:
    """Point an alias at a version (audited; production needs data that allows it)."""
    from granary.models.evaluate import Gate

    gate = Gate(data=gate_data, metric=gate_metric, max_change=gate_max_change) if gate_data else None
    mv = _registry().set_alias(ref, alias, override=override, gate=gate)
    if json_out:
        print_json({"model": mv.name, "alias": alias, "version": mv.version})
        return
    console.print(f"{mv.name}@{alias} -> version {mv.version}")


@model_app.command("card")
def card_cmd(
    ref: Annotated[str, typer.Argument(help="name, name@N or name@alias.")],
    fmt: Annotated[str, typer.Option("--format", help="md or html.")] = "md",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """A model card written from recorded facts (Markdown or HTML)."""
    from granary.models.card import model_facts, render_html, render_markdown

    facts = model_facts(_registry(), ref)
    if json_out:
        print_json(facts)
        return
    if fmt not in ("md", "html"):
        raise typer.BadParameter("--format is md or html")
    text = render_markdown(facts) if fmt == "md" else render_html(facts)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        console.print(f"wrote {output}")


@model_app.command("compress")
def compress_cmd(
    ref: Annotated[str, typer.Argument(help="The full-precision version.")],
    method: Annotated[str, typer.Option(help="int8-dynamic, int4, int8-weight, int4-weight, pruned-magnitude, "
                                             "pruned-structured.")],
    data: Annotated[str | None, typer.Option(help="Held-out tokens version to measure quality on.")] = None,
    sparsity: Annotated[float, typer.Option(help="Pruned share (pruning).")] = 0.5,
    group_size: Annotated[int, typer.Option(help="Input columns per scale (weight-only; int4 with 32, 64 or 128 "
                                                 "runs torch's int4 CPU kernel).")] = 32,
    max_samples: Annotated[int, typer.Option(help="Samples of --data for the quality measurement.")] = 2000,
    purpose: PurposeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compress a version into a new one, with size, latency and quality against the original."""
    from granary.models.compress import CompressOptions, compress

    mv = compress(_registry(purpose), ref, method, options=CompressOptions(sparsity=sparsity, group_size=group_size),
                  data=data, max_samples=max_samples, purpose=purpose or "evaluation")
    if json_out:
        print_json(mv.__dict__)
        return
    f = mv.facts
    rows = [("new version", mv.ref), ("bytes", f["size_bytes"]), ("size ratio", f"{f['size_ratio']:.2f}x"),
            ("latency ms (orig -> new)", f"{f['latency_ms']['original']} -> {f['latency_ms']['compressed']}")]
    for r, q in (f.get("quality") or {}).items():
        rows.append((f"perplexity {r}", f"{q['perplexity']:.4f}"))
    console.print(table(f"{method} of {ref}", ["field", "value"], rows))


@model_app.command("distill")
def distill_cmd(
    ref: Annotated[str, typer.Argument(help="The teacher version.")],
    data: Annotated[str, typer.Option(help="Tokens version to train the student on.")],
    student: Annotated[str, typer.Option(help="Student architecture changes, e.g. d_model=16,n_layers=1.")] = "",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 200,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 3e-3,
    temperature: Annotated[float, typer.Option(help="Softening temperature.")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Weight of the hard-label loss.")] = 0.5,
    purpose: PurposeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Distil a smaller student from a registered teacher; registered as a new version."""
    from granary.models.distill import DistillRecipe, distill

    changes = {k.strip(): int(v) for k, v in (p.split("=", 1) for p in student.split(",") if p.strip())}
    mv = distill(_registry(purpose), ref, DistillRecipe(student=changes, data=data, steps=steps, lr=lr,
                                                        temperature=temperature, alpha=alpha,
                                                        purpose=purpose or "pretraining"))
    if json_out:
        print_json(mv.__dict__)
        return
    d = mv.facts["distillation"]
    console.print(table(f"distilled {mv.ref}", ["field", "value"], [
        ("teacher", d["teacher"]), ("params (teacher -> student)",
                                    f"{mv.facts['params']['teacher']} -> {mv.facts['params']['student']}"),
        ("steps", d["steps"]), ("final loss", d["final_loss"]), ("bytes", mv.facts["size_bytes"])]))


@model_app.command("compare")
def compare_cmd(
    refs: Annotated[list[str], typer.Argument(help="Versions to compare.")],
    data: Annotated[str, typer.Option(help="The tokens version they were evaluated on.")],
    json_out: JsonOpt = False,
) -> None:
    """A comparison table of versions' evaluations on one tokens version."""
    from granary.models.evaluate import compare

    rows = compare(read_store(), refs, data)
    if json_out:
        print_json(rows)
        return

    def m(r: dict[str, Any], k: str) -> str:
        return "not evaluated" if r["metrics"] is None else f"{r['metrics'][k]:.4f}"

    console.print(table(f"on {data}", ["model", "method", "bytes", "perplexity", "accuracy"],
                        [(r["model"], r["method"], r["size_bytes"], m(r, "perplexity"), m(r, "accuracy"))
                         for r in rows]))


def eval_cmd(
    model: Annotated[str, typer.Argument(help="The model version: name, name@N or name@alias.")],
    data: Annotated[str, typer.Option(help="Held-out tokens version.")],
    metrics: Annotated[str, typer.Option(help="Comma-separated: perplexity, accuracy, loss.")] = "perplexity,accuracy",
    workers: Annotated[int, typer.Option(help="Parallel worker processes (scheduler jobs).")] = 2,
    shards: Annotated[int, typer.Option(help="Shards the samples are cut into (resume unit); 0: about 1000 "
                                              "samples per shard.")] = 0,
    max_samples: Annotated[int, typer.Option(help="Only the first N samples (0: all).")] = 0,
    inline: Annotated[bool, typer.Option(help="Compute in this process (no scheduler).")] = False,
    purpose: PurposeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate a model version on held-out data (sharded, parallel, resumable; results kept with the version)."""
    from granary.models.evaluate import evaluate, make_plan, parse_metrics

    names = parse_metrics(metrics)
    store = read_store(purpose or "evaluation")
    if shards < 0:
        raise typer.BadParameter(f"--shards must be >= 0 (0: automatic), got {shards}")
    plan = make_plan(store, model, data, num_shards=shards or None, max_samples=max_samples,
                     purpose=purpose or "evaluation")
    result = evaluate(store, plan, workers=workers, inline=inline)
    result["metrics"] = {k: v for k, v in result["metrics"].items() if k in names or k == "tokens"}
    if json_out:
        print_json(result)
        return
    console.print(table(f"{result['model']} on {result['data'][:40]}", ["metric", "value"],
                        [(k, f"{v:.6g}") for k, v in result["metrics"].items()]))
    console.print(f"{result['computed']} of {result['shards']} shards computed by {result['workers']} worker(s) "
                  f"in {result['seconds']:.1f}s")


def tune_cmd(
    spec: Annotated[Path, typer.Argument(help="Search spec (YAML): data, heldout, space, base, steps, pruner...")],
    study: Annotated[str, typer.Option(help="Study name (continued when it exists).")],
    trials: Annotated[int, typer.Option(help="Trials to run.")] = 20,
    workers: Annotated[int, typer.Option(help="Trials at once (scheduler jobs).")] = 2,
    executor: Annotated[str, typer.Option(help="sched (scheduler jobs) or ray (Ray tasks).")] = "sched",
    json_out: JsonOpt = False,
) -> None:
    """Hyperparameter search with Optuna; trials run by --workers scheduler jobs, pruned early by median or ASHA."""
    from granary.models.hpo import SearchSpec, search

    data = _read_mapping(spec) or {}
    result = search(read_store(), SearchSpec(**data), study=study, trials=trials, workers=workers,
                    executor=executor)
    if json_out:
        print_json(result)
        return
    best = result["best"] or {}
    console.print(table(f"study {study}", ["field", "value"], [
        ("trials", result["trials"]), ("states", json.dumps(result["states"])), ("best value", best.get("value")),
        ("best params", json.dumps(best.get("params"))), ("seconds", f"{result['seconds']:.1f}")]))


def deploy_cmd(
    model: Annotated[str, typer.Argument(help="The version to serve: name@production, name@N.")],
    replicas: Annotated[int, typer.Option(help="Model servers.")] = 1,
    served_as: Annotated[str | None, typer.Option(help="Model name requests carry (default: the model's).")] = None,
    canary: Annotated[float | None, typer.Option(help="Canary share of traffic (e.g. 0.1); omit for a full "
                                                      "rollout.")] = None,
    watch_s: Annotated[float, typer.Option(help="Canary watch before promotion.")] = 60.0,
    max_error_rate: Annotated[float, typer.Option(help="Roll back above this error rate.")] = 0.05,
    max_p95_ms: Annotated[float | None, typer.Option(help="Roll back above this p95 latency.")] = None,
    ready_timeout_s: Annotated[float, typer.Option(help="Servers not healthy by then fail the deploy.")] = 120.0,
    purpose: PurposeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Serve a model version behind the gateway (servers are scheduler jobs: run `granary sched up` first)."""
    from granary.models.deploy import CanaryPolicy, Deployer

    policy = None if canary is None else CanaryPolicy(weight=canary, watch_s=watch_s, max_error_rate=max_error_rate,
                                                      max_p95_ms=max_p95_ms)
    result = Deployer(_registry(), ready_timeout_s=ready_timeout_s, purpose=purpose).deploy(model, replicas=replicas,
                                                                           served_as=served_as, canary=policy)
    if json_out:
        print_json(result)
        return
    console.print(table(f"deploy {model}", ["field", "value"], [(k, v) for k, v in result.items()]))


def undeploy_cmd(model: Annotated[str, typer.Argument(help="name (every version) or name@N.")],
                 json_out: JsonOpt = False) -> None:
    """Stop a model's servers (endpoints withdrawn first, then the jobs cancelled)."""
    from granary.models.deploy import Deployer

    stopped = Deployer(_registry()).undeploy(model)
    if json_out:
        print_json({"stopped": stopped})
        return
    console.print(f"stopped {', '.join(stopped)}")


def register(app: typer.Typer) -> None:
    """Add `granary model`, `eval`, `tune`, `deploy` and `undeploy` to the main app."""
    app.add_typer(model_app, name="model")
    app.command("eval")(eval_cmd)
    app.command("tune")(tune_cmd)
    app.command("deploy")(deploy_cmd)
    app.command("undeploy")(undeploy_cmd)
