"""`granary gateway ...`: run the inference gateway, change its backends, run simulated model servers, and
register a serving job's endpoint. Thin over granary.serve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from granary.cli.output import console, fail, print_json, table

gateway_app = typer.Typer(help="The inference gateway: balance traffic across model servers.", no_args_is_help=True)
backend_app = typer.Typer(help="Add, remove, re-weight, drain and list the backends of a running gateway.",
                          no_args_is_help=True)
gateway_app.add_typer(backend_app, name="backend")

NameOpt = typer.Option("default", "--name", help="The gateway's name (from its config).")
AdminOpt = typer.Option(None, "--admin-url", help="Admin URL of a gateway elsewhere (default: from its state file).")
JsonOpt = typer.Option(False, "--json", help="JSON output.")


def _client(name: str, admin_url: str | None) -> Any:
    from granary.serve.client import GatewayClient

    return GatewayClient.for_gateway(name, admin_url=admin_url)


@gateway_app.command("up")
def up(
    config: Path = typer.Option(..., "--config", "-c", help="Gateway config (YAML; see examples/gateway.yaml)."),
    port: int = typer.Option(None, help="Override the data port."),
    workers: int = typer.Option(None, help="Override the number of worker processes (0: one per core)."),
    admin_port: int = typer.Option(None, help="Override the admin port."),
) -> None:
    """Run the gateway until interrupted (SIGINT/SIGTERM drain in-flight requests first)."""
    import dataclasses

    from granary.serve.config import load_config
    from granary.serve.gateway import Gateway

    cfg = load_config(config)
    given = (("port", port), ("workers", workers), ("admin_port", admin_port))
    overrides: dict[str, Any] = {k: v for k, v in given if v is not None}
    cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
    gw = Gateway(cfg)
    _announce(gw)
    gw.run()


def _announce(gw: Any) -> None:
    """Print the addresses once the gateway is listening (a one-line JSON on stdout, for scripts and tests)."""
    original = gw.start

    async def start() -> None:
        await original()
        sys.stdout.write(json.dumps({"name": gw.config.name, "url": f"http://{gw.config.host}:{gw.port}",
                                     "admin_url": gw.admin_url, "workers": gw.num_workers}) + "\n")
        sys.stdout.flush()

    gw.start = start


@gateway_app.command("check")
def check(config: Path = typer.Option(..., "--config", "-c", help="Gateway config to validate.")) -> None:
    """Validate a config file without starting anything."""
    from granary.serve.config import load_config

    cfg = load_config(config)
    rows = [(r.name, r.policy, ", ".join(r.models) or "-", r.path_prefix or "-", len(r.backends)) for r in cfg.routes]
    console.print(table(f"{config}: valid", ["route", "policy", "models", "path prefix", "backends"], rows))


@gateway_app.command("status")
def status(name: str = NameOpt, admin_url: str = AdminOpt, as_json: bool = JsonOpt) -> None:
    """Addresses, workers, routes and what each worker has in flight."""
    st = _client(name, admin_url).status()
    if as_json:
        print_json(st)
        return
    console.print(f"gateway [bold]{st['name']}[/]: http://{st['host']}:{st['port']}, admin {st['admin_url']}, "
                  f"up {st['uptime_s']} s, pid {st['pid']}")
    rows = [(w["pid"], w["in_flight"], w["queued"],
             sum(int(b["ejected"]) for r in w["routes"] for b in r["backends"])) for w in st["workers"]]
    console.print(table("workers", ["pid", "in flight", "queued", "ejected backends"], rows))
    console.print(table("routes", ["route", "policy", "models", "path prefix"],
                        [(r["name"], r["policy"], ", ".join(r["models"]), r["path_prefix"] or "")
                         for r in st["routes"]]))


@backend_app.command("list")
def backend_list(name: str = NameOpt, admin_url: str = AdminOpt, as_json: bool = JsonOpt) -> None:
    """Every backend with its weight, health, drain state and live counters (summed over workers)."""
    data = _client(name, admin_url).backends()
    if as_json:
        print_json(data)
        return
    rows = [(route, b["name"], b["url"], f"{b['weight']:g}", "yes" if b["healthy"] else "NO",
             "yes" if b["draining"] else "", b.get("ejected_in", 0), b.get("in_flight", 0), b.get("requests", 0),
             b["source"]) for route, members in data["routes"].items() for b in members]
    console.print(table(f"backends ({data['workers']} workers)",
                        ["route", "name", "url", "weight", "healthy", "draining", "ejected in", "in flight",
                         "requests", "source"], rows))


@backend_app.command("add")
def backend_add(
    route: str = typer.Argument(..., help="Route name."),
    backend: str = typer.Argument(..., help="Backend name."),
    url: str = typer.Argument(..., help="http://host:port"),
    weight: float = typer.Option(1.0, help="Weight."),
    name: str = NameOpt, admin_url: str = AdminOpt, as_json: bool = JsonOpt,
) -> None:
    """Add a backend at run time (it enters in slow start)."""
    _done(_client(name, admin_url).add(route, backend, url, weight), as_json, f"added {backend} to {route}")


@backend_app.command("remove")
def backend_remove(route: str = typer.Argument(...), backend: str = typer.Argument(...),
                   name: str = NameOpt, admin_url: str = AdminOpt, as_json: bool = JsonOpt) -> None:
    """Remove a backend: it drains for the route's drain_s, then goes."""
    _done(_client(name, admin_url).remove(route, backend), as_json, f"removing {backend} from {route} (draining)")


@backend_app.command("weight")
def backend_weight(route: str = typer.Argument(...), backend: str = typer.Argument(...),
                   weight: float = typer.Argument(..., help="New weight, in (0, 10000]."),
                   name: str = NameOpt, admin_url: str = AdminOpt, as_json: bool = JsonOpt) -> None:
    """Change a backend's weight."""
    _done(_client(name, admin_url).set_weight(route, backend, weight), as_json, f"{backend} now weighs {weight:g}")


@backend_app.command("drain")
def backend_drain(route: str = typer.Argument(...), backend: str = typer.Argument(...),
                  undo: bool = typer.Option(False, "--undo", help="Take new requests again."),
                  name: str = NameOpt, admin_url: str = AdminOpt, as_json: bool = JsonOpt) -> None:
    """Stop sending new requests to a backend (in-flight ones finish)."""
    _done(_client(name, admin_url).drain(route, backend, not undo), as_json,
          f"{backend} {'takes requests again' if undo else 'is draining'}")


def _done(result: dict[str, Any], as_json: bool, message: str) -> None:
    if as_json:
        print_json(result)
    else:
        console.print(f"{message} (table version {result.get('version')})")


@gateway_app.command("sim")
def sim(
    count: int = typer.Option(1, help="How many simulated servers (one process each)."),
    model: str = typer.Option("sim", help="Model name they serve."),
    per_token_ms: float = typer.Option(5.0, help="Decode time per output token."),
    prefill_per_token_ms: float = typer.Option(0.1, help="Prefill time per uncached prompt token."),
    slowdown: float = typer.Option(1.0, help="Multiply every time (a slow replica)."),
    max_concurrency: int = typer.Option(16, help="Requests generated at once per server."),
    kv_blocks: int = typer.Option(8192, help="Prefix-cache capacity in 16-token blocks."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    as_json: bool = JsonOpt,
) -> None:
    """Start simulated OpenAI-compatible LLM servers (ephemeral ports) and keep them running until Ctrl-C."""
    args = ["--model", model, "--per-token-ms", str(per_token_ms), "--prefill-per-token-ms",
            str(prefill_per_token_ms), "--slowdown", str(slowdown), "--max-concurrency", str(max_concurrency),
            "--kv-blocks", str(kv_blocks), "--host", host]
    procs = [subprocess.Popen([sys.executable, "-m", "granary.serve.sim", "--port", "0", *args],
                              stdout=subprocess.PIPE, text=True) for _ in range(count)]
    urls = []
    for p in procs:
        line = p.stdout.readline() if p.stdout else ""
        if not line:
            for q in procs:
                q.terminate()
            fail("a simulated server did not start; run `python -m granary.serve.sim` to see why")
        urls.append(json.loads(line)["url"])
    if as_json:
        print_json({"model": model, "urls": urls, "pids": [p.pid for p in procs]})
    else:
        console.print(table(f"{count} simulated servers of {model!r} (Ctrl-C stops them)", ["name", "url", "pid"],
                            [(f"sim{i}", u, p.pid) for i, (u, p) in enumerate(zip(urls, procs, strict=True))]))
    sys.stdout.flush()
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


@gateway_app.command("endpoint")
def endpoint(
    model: str = typer.Option(..., help="The model the server serves (the gateway routes it by this name)."),
    port: int = typer.Option(None, help="The server's port; omit it and write {port} in the command for a free one."),
    backend: str = typer.Option(None, "--backend-name", help="Backend name (default: job id and replica)."),
    advertise_host: str = typer.Option(None, help="Address gateways reach the server at "
                                                  "(default: GRANARY_ADVERTISE_HOST or 127.0.0.1)."),
    health_path: str = typer.Option("/health", help="Path that answers 2xx once the server is ready."),
    weight: float = typer.Option(1.0, help="Weight."),
    lease_s: float = typer.Option(15.0, help="The registration lapses this long after the last heartbeat."),
    ready_timeout_s: float = typer.Option(600.0, help="Give up if the server is not ready by then."),
    drain_s: float = typer.Option(5.0, help="On SIGTERM: withdraw, wait this long for gateways to drain, then stop."),
    command: list[str] = typer.Argument(..., help="The model server's command (after --)."),
) -> None:
    """Run a model server and register it with gateways until it exits (use it as a serving job's command)."""
    from granary.serve.serving import ServingEndpoint

    host = advertise_host or os.environ.get("GRANARY_ADVERTISE_HOST") or "127.0.0.1"
    ep = ServingEndpoint(model=model, command=command, port=port, name=backend, host=host, health_path=health_path,
                         weight=weight, lease_s=lease_s, ready_timeout_s=ready_timeout_s, drain_s=drain_s)
    signal.signal(signal.SIGTERM, lambda *_: ep.request_stop())
    raise typer.Exit(ep.run())


def register(app: typer.Typer) -> None:
    """Add `granary gateway` to the main app."""
    app.add_typer(gateway_app, name="gateway")
