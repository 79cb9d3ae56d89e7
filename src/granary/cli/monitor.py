"""`granary agent`, `granary metrics`: thin commands over granary.monitor (watch, alerts and energy in watch.py)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from granary.cli.output import console, fail, print_json, table
from granary.errors import MonitorError

if TYPE_CHECKING:
    from granary.catalog import Catalog


def catalog() -> Catalog:
    """The catalog named by the settings."""
    from granary.catalog import open_catalog
    from granary.config import Settings

    return open_catalog(Settings.from_env().catalog_url)


def agent(
    node: str = typer.Option(None, help="Node name (default: host name)."),
    interval_s: float = typer.Option(1.0, "--interval", help="Seconds between samples."),
    host: str = typer.Option("127.0.0.1", help="Address to serve /metrics and /push on."),
    port: int = typer.Option(9464, help="Port (0: any free port)."),
    store: bool = typer.Option(True, help="Store samples in the catalog for the detectors."),
    store_every_s: float = typer.Option(5.0, help="Seconds between writes to the catalog."),
    fake_gpus: int = typer.Option(0, help="Use the fake NVML backend with N GPUs (tests and demos; no GPU here)."),
    fake_state: Path = typer.Option(None, help="JSON file the fake NVML re-reads each sample (to inject faults)."),
    once: bool = typer.Option(False, help="Take one sample, print it and exit."),
    as_json: bool = typer.Option(False, "--json", help="With --once: print the readings as JSON."),
) -> None:
    """Run the monitor's node agent: host and GPU readings, pushes from jobs, /metrics for Prometheus."""
    import socket

    from granary.monitor.agent import NodeAgent, NodeAgentConfig
    from granary.monitor.gpu import FakeNvml, open_gpu_backend
    from granary.monitor.series import SeriesStore

    fake = FakeNvml.with_gpus(fake_gpus, state_file=fake_state) if fake_gpus or fake_state else None
    if fake is not None and fake_state is not None and not fake_state.exists():
        fake.save()
    gpu, status = open_gpu_backend(fake)
    cfg = NodeAgentConfig(node=node or socket.gethostname(), interval_s=interval_s, store_every_s=store_every_s)
    series = SeriesStore(catalog()) if store else None
    a = NodeAgent(cfg, gpu=gpu, gpu_status=status, series=series)
    if once:
        time.sleep(min(interval_s, 0.5))  # CPU utilisation is measured between two readings
        samples = a.sample()
        if as_json:
            print_json({"node": cfg.node, "gpu": status, "samples": [
                {"name": n, "labels": dict(lab), "value": v} for n, lab, v in samples]})
        else:
            rows = [(n, ",".join(f"{k}={v}" for k, v in lab), f"{v:,.4g}") for n, lab, v in samples]
            console.print(table(f"node {cfg.node}: {status}", ["metric", "labels", "value"], rows))
        a.close()
        return
    url = a.serve(host, port)
    console.print(f"agent: node {cfg.node}; {status}; serving {url}/metrics and {url}/push", highlight=False)
    stop = threading.Event()
    try:
        a.run(stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        a.close()


def metrics(
    scrape: str = typer.Option(None, help="Scrape this /metrics URL and show what it exports."),
    stored: str = typer.Option(None, help="Show the last stored value of each series of this metric."),
    owner: str = typer.Option(None, help="Only metrics of this owner (monitor, serve, train, server)."),
    timeout_s: float = typer.Option(10.0, "--timeout", help="Give up on a scrape after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the metric-name contract, scrape an endpoint, or show stored series."""
    from granary.monitor.names import CONTRACT

    if scrape:
        from granary.monitor.metrics import parse

        try:
            with urllib.request.urlopen(scrape, timeout=timeout_s) as resp:  # a URL the user gave
                text = resp.read().decode("utf-8", errors="replace")
        except (OSError, ValueError) as exc:  # refused, timed out, bad URL
            fail(MonitorError(f"cannot scrape {scrape}: {exc}", hint="check the URL and that the exporter runs"))
        try:
            samples = parse(text)
        except ValueError as exc:
            fail(MonitorError(f"{scrape} does not answer in the Prometheus text format: {exc}",
                              hint="point --scrape at a /metrics endpoint"))
        if as_json:
            print_json([{"name": n, "labels": dict(lab), "value": v} for n, lab, v in samples])
            return
        rows = [(n, ",".join(f"{k}={v}" for k, v in lab), f"{v:,.4g}",
                 "yes" if n.removesuffix("_total") + "_total" in CONTRACT or n in CONTRACT else "NO")
                for n, lab, v in samples]
        console.print(table(f"{scrape}: {len(samples)} samples", ["metric", "labels", "value", "in contract"], rows))
        return
    if stored:
        from granary.monitor.series import SeriesStore

        series = SeriesStore(catalog()).read(stored, since=time.time() - 86400)
        out: list[dict[str, Any]] = [{"labels": s.labels, "ts": float(s.ts[-1]), "value": float(s.values[-1]),
                                      "samples": len(s.ts)} for s in series if len(s.ts)]
        if as_json:
            print_json(out)
            return
        console.print(table(f"{stored} (last 24 h)", ["labels", "last value", "at", "samples"],
                            [(json.dumps(o["labels"]), f"{o['value']:,.4g}",
                              time.strftime("%H:%M:%S", time.localtime(float(o["ts"]))), o["samples"]) for o in out]))
        return
    defs = [m for m in CONTRACT.values() if owner is None or m.owner == owner]
    if as_json:
        print_json([{"name": m.name, "kind": m.kind, "labels": list(m.labels), "owner": m.owner, "help": m.help}
                    for m in defs])
        return
    console.print(table(f"{len(defs)} metrics", ["name", "type", "labels", "owner", "help"],
                        [(m.name, m.kind, ",".join(m.labels), m.owner, m.help) for m in defs], no_wrap=["name"]))


def register(app: typer.Typer) -> None:
    """Add the monitor commands."""
    app.command("agent")(agent)
    app.command("metrics")(metrics)


def start_node_monitor(node: str, port: int, stop: threading.Event, *, interval_s: float = 1.0) -> str:
    """Run the monitor's node agent on a thread next to a scheduler agent; jobs launched from this process
    inherit ``GRANARY_MONITOR_URL`` and push to it. Returns its URL."""
    import os

    from granary.monitor.agent import NodeAgent, NodeAgentConfig
    from granary.monitor.gpu import open_gpu_backend
    from granary.monitor.series import SeriesStore

    gpu, status = open_gpu_backend()
    a = NodeAgent(NodeAgentConfig(node=node, interval_s=interval_s), gpu=gpu, gpu_status=status,
                  series=SeriesStore(catalog()))
    url = a.serve("0.0.0.0", port)
    local = f"http://127.0.0.1:{url.rsplit(':', 1)[1]}"
    os.environ["GRANARY_MONITOR_URL"] = local
    threading.Thread(target=a.run, args=(stop,), daemon=True, name="monitor-agent").start()
    console.print(f"monitor: {status}; {local}/metrics, jobs push to {local}/push", highlight=False)
    return local
