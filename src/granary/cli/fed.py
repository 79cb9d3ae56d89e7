"""`granary fed`: federated training across sites (server, client, run) and the shared CKKS key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from granary.cli.output import console, print_json, table

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
PublishOpt = Annotated[str | None, typer.Option("--publish", help="Commit the final model, with the run's lineage "
                                                               "(sites, versions, privacy budget), as a version of "
                                                               "this checkpoint dataset of the coordinator's store.")]
HeOpt = Annotated[str | None, typer.Option("--he-context", help="CKKS context file (ckks runs): the secret one "
                                                               "at sites, the .pub one at the server.")]

fed_app = typer.Typer(help="Federated training: sites train on their own data and send only model updates.",
                      no_args_is_help=True)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("flwr").propagate = False  # Flower prints its own lines


def _summary(result: dict[str, Any]) -> None:
    rows = [(r.get("round"), r.get("status"), r.get("accepted", ""), ", ".join(r.get("dropped", [])) or "",
             "; ".join(f"{k}: {v}" for k, v in r.get("rejected", {}).items()) or r.get("reason", ""),
             f"{r['train_loss']:.4f}" if r.get("train_loss") is not None else "",
             f"{int(r.get('bytes_received', 0)):,}") for r in result.get("rounds", [])]
    console.print(table(f"federated run {result.get('run')}", ["round", "status", "updates", "dropped",
                                                               "rejected / reason", "train loss", "bytes in"], rows))
    for site, reason in result.get("refused", {}).items():
        console.print(f"[yellow]site {site} refused: {reason}")
    if "dp" in result:
        console.print(f"client-level DP: epsilon {result['dp']['epsilon']:.3f} at delta {result['dp']['delta']:g}")
    if "published" in result:
        console.print(f"model published as {result['published']['ref']} (see `granary lineage "
                      f"{result['published']['dataset']}`)")


@fed_app.command("server")
def server(
    config: Annotated[Path, typer.Argument(help="Federated run config (YAML or JSON; see docs/privacy.md).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for result.json and model.pt.")] = Path("fed-out"),
    he_context: HeOpt = None,
    submit: Annotated[bool, typer.Option("--submit", help="Submit the coordinator as a scheduler job instead.")]
    = False,
    publish: PublishOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run the coordinator (Flower server): it holds no data and sees only updates (or their sum)."""
    import dataclasses

    from granary.train.federated import FedConfig
    from granary.train.federated.server import run_server, server_job

    cfg = FedConfig.load(config)
    if publish:
        cfg = dataclasses.replace(cfg, publish=publish)
    if submit:
        from granary.cli.sched import _catalog
        from granary.sched.journal import submit_job

        job_id = submit_job(_catalog(), server_job(config, out, name=f"fed-{cfg.name}", he_context=he_context,
                                                       publish=publish))
        print_json({"job": job_id}) if json_out else console.print(f"submitted coordinator job {job_id}")
        return
    _logging()
    result = run_server(cfg, out, he_public=Path(he_context).read_bytes() if he_context else None)
    print_json(result) if json_out else _summary(result)
    if not result["ok"]:
        raise typer.Exit(1)


@fed_app.command("client")
def client(
    dataset: Annotated[str, typer.Argument(help="The local tokens dataset to train on (ref).")],
    site: Annotated[str, typer.Option("--site", help="This site's unique name in the federation.")],
    server_address: Annotated[str, typer.Option("--server", help="HOST:PORT of the coordinator.")],
    home: Annotated[str | None, typer.Option("--home", help="This site's Granary home (default GRANARY_HOME).")]
    = None,
    purpose: Annotated[str | None, typer.Option("--purpose", help="Serve only runs declaring this purpose.")]
    = None,
    he_context: HeOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Data order seed.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Join a federated run as a site: train locally, send only updates, audit every round."""
    from granary.train.federated import SiteConfig
    from granary.train.federated.client import run_client

    _logging()
    code = run_client(SiteConfig(name=site, dataset=dataset, home=home, purpose=purpose, he_context=he_context,
                                 seed=seed), server_address)
    if json_out:
        print_json({"site": site, "exit_code": code})
    raise typer.Exit(code)


def _parse_site(text: str, he_context: str | None) -> Any:
    from granary.train.federated import FederatedError, SiteConfig

    name, sep, rest = text.partition("=")
    home, sep2, dataset = rest.rpartition(":")
    if not (sep and sep2 and name and home and dataset):
        raise FederatedError(f"bad --site {text!r}", hint="write NAME=HOME:DATASET, e.g. a=/data/site-a:web-tok")
    return SiteConfig(name=name, dataset=dataset, home=home, he_context=he_context)


@fed_app.command("run")
def run(
    config: Annotated[Path, typer.Argument(help="Federated run config (YAML or JSON).")],
    sites: Annotated[list[str], typer.Option("--site", help="NAME=HOME:DATASET, once per site.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results and logs.")] = Path("fed-out"),
    he_context: Annotated[str | None, typer.Option("--he-context", help="Secret CKKS context (ckks runs); the "
                                                                        "server gets its public form.")] = None,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Kill everything after this many seconds.")] = 900,
    publish: PublishOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run the coordinator and every site as separate processes on this machine."""
    import dataclasses

    from granary.train.federated import FedConfig
    from granary.train.federated.local import run_local

    cfg = FedConfig.load(config)
    if publish:
        cfg = dataclasses.replace(cfg, publish=publish)
    public = None
    if he_context:
        from granary.secure import he

        out.mkdir(parents=True, exist_ok=True)
        public = str(out / "context.pub")
        Path(public).write_bytes(he.public_context(Path(he_context).read_bytes()))
    outcome = run_local(cfg, [_parse_site(s, he_context) for s in sites], out, he_public=public, timeout_s=timeout_s)
    if json_out:
        print_json({**outcome.result, "server_exit": outcome.server_code, "site_exits": outcome.site_codes})
    else:
        _summary(outcome.result) if outcome.result else console.print(outcome.logs["server"][-2000:])
    if outcome.server_code != 0:
        raise typer.Exit(1)


@fed_app.command("keys")
def keys(
    out: Annotated[Path, typer.Argument(help="Prefix: writes PREFIX.ctx (secret, for sites) and PREFIX.pub.")],
    json_out: JsonOpt = False,
) -> None:
    """Make the CKKS context the sites share (secret) and its public form for the coordinator."""
    from granary.secure import he

    secret = he.new_context()
    sec, pub = out.with_suffix(".ctx"), out.with_suffix(".pub")
    sec.touch(mode=0o600)
    sec.write_bytes(secret)
    pub.write_bytes(he.public_context(secret))
    info = {"secret": str(sec), "public": str(pub), "secret_bytes": sec.stat().st_size,
            "public_bytes": pub.stat().st_size}
    print_json(info) if json_out else console.print(table("CKKS context", ["file", "bytes"],
                                                          [(sec, info["secret_bytes"]), (pub, info["public_bytes"])]))


def register(app: typer.Typer) -> None:
    """Add `granary fed`."""
    app.add_typer(fed_app, name="fed")
