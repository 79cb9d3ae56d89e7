"""`granary watch ...` and `granary alerts`: run the detectors, list events, silence them, ask for restarts."""

from __future__ import annotations

import json
import threading
import time

import typer

from granary.cli.monitor import catalog
from granary.cli.output import console, print_json, table

watch_app = typer.Typer(help="Detectors that act through the scheduler, alerts and silences.", no_args_is_help=True)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise typer.BadParameter(f"{text!r} is not a duration; write e.g. 90s, 30m, 2h, 1d") from None


@watch_app.command("run")
def run_cmd(
    interval_s: float = typer.Option(5.0, "--interval", help="Seconds between evaluations."),
    lookback_s: float = typer.Option(600.0, "--lookback", help="History the detectors see (s)."),
    webhook: list[str] = typer.Option([], help="Alertmanager-style webhook URL (repeatable)."),
    repeat: str = typer.Option("4h", help="Resend a still-firing group after this long."),
    act: bool = typer.Option(True, help="File restart/evacuation requests with the scheduler."),
    port: int = typer.Option(9465, help="Serve the scheduler's granary_sched_* metrics here (-1: don't)."),
    once: bool = typer.Option(False, help="Evaluate once, print the findings and exit."),
    as_json: bool = typer.Option(False, "--json", help="With --once: print JSON."),
) -> None:
    """Run the watcher: detectors over stored series, events in the catalog, actions, notifications."""
    from granary.monitor.notify import WebhookConfig
    from granary.monitor.watcher import Watcher, WatcherConfig

    hooks = tuple(WebhookConfig(url=u, repeat_interval_s=_duration(repeat)) for u in webhook)
    w = Watcher(catalog(), WatcherConfig(interval_s=interval_s, lookback_s=lookback_s, act=act, webhooks=hooks))
    if once:
        found, actions = w.evaluate()
        rows = [dict(detector=f.detector, severity=f.severity, labels=f.labels, summary=f.summary,
                     action=actions.get(f.fingerprint, "")) for f in found]
        if as_json:
            print_json(rows)
            return
        console.print(table(f"{len(found)} findings", ["detector", "severity", "labels", "summary", "action"],
                            [(r["detector"], r["severity"], json.dumps(r["labels"]), r["summary"], r["action"])
                             for r in rows]))
        return
    if port >= 0:
        _serve_sched_metrics(w, port)
    console.print(f"watch: every {interval_s:g} s over {lookback_s:g} s of history; {len(hooks)} webhook(s)")
    stop = threading.Event()
    try:
        w.run(stop)
    except KeyboardInterrupt:
        stop.set()


def _serve_sched_metrics(w: object, port: int) -> None:
    import prometheus_client as pc

    from granary.monitor.energy import energy_samples
    from granary.monitor.metrics import SampleCollector, families, sched_samples

    cat = w.catalog  # type: ignore[attr-defined]
    registry = pc.CollectorRegistry(auto_describe=False)
    registry.register(SampleCollector(lambda: families(sched_samples(cat) + energy_samples(cat))))
    pc.start_http_server(port, registry=registry)
    console.print(f"scheduler metrics on http://0.0.0.0:{port}/metrics")


@watch_app.command("silence")
def silence_cmd(
    matchers: list[str] = typer.Argument(..., help="label=value pairs, e.g. node=n3 detector=disk_fill."),
    duration: str = typer.Option("2h", "--for", help="How long (90s, 30m, 2h, 1d)."),
    comment: str = typer.Option("", help="Why."),
) -> None:
    """Mute notifications of matching events for a while (events are still recorded)."""
    from granary.monitor.events import EventLog

    pairs = dict(m.split("=", 1) for m in matchers if "=" in m)
    if len(pairs) != len(matchers):
        raise typer.BadParameter("each matcher is label=value")
    sid = EventLog(catalog()).silence(pairs, _duration(duration), comment=comment)
    console.print(f"silence {sid}: {pairs} for {duration}")


@watch_app.command("restart")
def restart_cmd(job_id: str, reason: str = typer.Option("operator request", help="Why.")) -> None:
    """Ask the scheduler to restart a running job from its latest checkpoint."""
    from granary.sched.journal import request_restart

    console.print(f"request {request_restart(catalog(), job_id, reason)} filed; the controller acts at its next tick")


@watch_app.command("evacuate")
def evacuate_cmd(node: str, reason: str = typer.Option("operator request", help="Why.")) -> None:
    """Ask the scheduler to drain a node and move its jobs elsewhere now."""
    from granary.sched.journal import request_evacuate

    console.print(f"request {request_evacuate(catalog(), node, reason)} filed; the controller acts at its next tick")


@watch_app.command("requests")
def requests_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Restart and evacuation requests and what the controller did with them."""
    from granary.sched.journal import list_requests

    rows = list_requests(catalog())
    if as_json:
        print_json(rows)
        return
    console.print(table("requests", ["id", "kind", "target", "state", "by", "reason", "outcome"],
                        [(r["id"], r["kind"], r["target"], r["state"], r["requested_by"], r["reason"], r["outcome"])
                         for r in rows]))


def alerts(
    all_: bool = typer.Option(False, "--all", help="Resolved events too (default: firing only)."),
    since: str = typer.Option("1d", help="Events updated within this long (90s, 30m, 2h, 1d)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Detection events: severity, labels, summary, evidence, what was done, the runbook."""
    from granary.monitor.events import EventLog

    events = EventLog(catalog()).list(states=None if all_ else ("firing",), since=time.time() - _duration(since))
    if as_json:
        print_json(events)
        return
    rows = [(e["id"], *((e["state"],) if all_ else ()), e["severity"], e["detector"],
             " ".join(f"{k}={v}" for k, v in e["labels"].items()), e["summary"], e["action"],
             time.strftime("%H:%M:%S", time.localtime(e["starts_at"]))) for e in events]
    columns = ["id", *(["state"] if all_ else []), "severity", "detector", "labels", "summary", "action", "since"]
    console.print(table(f"{len(rows)} {'events' if all_ else 'firing alerts'} (runbooks: docs/watch.md#<detector>)",
                        columns, rows))


def register(app: typer.Typer) -> None:
    """Add the watch commands."""
    app.add_typer(watch_app, name="watch")
    app.command("alerts")(alerts)
