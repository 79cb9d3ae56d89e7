"""`granary energy`: energy per job, tenant, node or day; `granary energy simulate`: energy-aware scheduling
(power-down of idle nodes, a cluster power cap) against the default policy on a trace."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from granary.cli.monitor import catalog
from granary.cli.output import console, fail, print_json, progress, table
from granary.cli.watch import _duration
from granary.errors import GranaryError

energy_app = typer.Typer(help="Energy per job, tenant, node and day; energy-aware scheduling in the simulator.",
                         invoke_without_command=True)


@energy_app.callback()
def report_cmd(
    ctx: typer.Context,
    by: str = typer.Option("job", help="Group by job, tenant, node or day."),
    since: str = typer.Option("7d", help="Attempts that ended within this long (90s, 30m, 2h, 7d)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Energy of finished job attempts (IT and facility kWh, CO2e, J per token); PUE and carbon from settings."""
    if ctx.invoked_subcommand is not None:
        return
    from granary.monitor.energy import EnergySettings, account_finished, report

    try:
        settings = EnergySettings.from_env()
    except GranaryError as exc:  # a group callback is not wrapped by main's error guard
        fail(exc)
    cat = catalog()
    account_finished(cat)
    rows = report(cat, by=by, since=time.time() - _duration(since), settings=settings)  # type: ignore[arg-type]
    if as_json:
        print_json(rows)
        return

    def f(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    console.print(table(f"energy by {by} (PUE {settings.pue:g}, {settings.carbon_g_per_kwh:g} gCO2e/kWh)",
                        [by, "attempts", "GPU-h", "IT kWh", "facility kWh", "kg CO2e", "tokens", "J/token", "source"],
                        [(r[by], r["attempts"], f(r["gpu_h"], ".3f"), f(r["it_kwh"], ".4f"),
                          f(r["facility_kwh"], ".4f"), f(r["co2_kg"], ".4f"), r["tokens"] or "",
                          f(r["j_per_token"], ".3g"), r["sources"]) for r in rows]))


@energy_app.command("simulate")
def simulate_cmd(
    trace: Path = typer.Option(..., help="Trace CSV (timestamp, duration, num_gpus[, cluster])."),
    jobs: int = typer.Option(5000, help="Replay the first N jobs (0: all)."),
    gpus: int = typer.Option(640, help="Cluster size in GPUs."),
    power_down_after_s: float = typer.Option(600.0, help="Power a node down after this long idle."),
    power_up_s: float = typer.Option(300.0, help="Boot time of a powered-down node."),
    cap_share: float = typer.Option(0.8, help="Power cap as a share of the cluster's peak power."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Energy saved by packing with power-down and by a power cap, and what they cost in JCT."""
    from granary.sched.power import PowerConfig, simulate_energy
    from granary.sched.simulator import SimConfig
    from granary.sched.trace import load_trace

    tr = load_trace(trace)
    if jobs:
        tr = tr.slice(0, jobs)
    base = PowerConfig(power_up_s=power_up_s)
    off = PowerConfig(power_up_s=power_up_s, power_down_after_s=power_down_after_s)
    nodes = gpus // 8
    peak_w = nodes * (base.base_w + 8 * base.gpu_busy_w)
    runs = [("default (mlfq/topology, always on)", SimConfig(gpus=gpus), base),
            ("pack (binpack) + power-down", SimConfig(gpus=gpus, placement="binpack"), off),
            ("topology + power-down", SimConfig(gpus=gpus), off),
            ("spread + power-down", SimConfig(gpus=gpus, placement="spread"), off),
            (f"power cap {cap_share:.0%} of peak", SimConfig(gpus=gpus),
             PowerConfig(power_up_s=power_up_s, cap_w=cap_share * peak_w))]
    results = []
    with progress(transient=True, disable=as_json) as bar:
        task = bar.add_task("simulating", total=len(runs))
        for name, cfg, pw in runs:
            results.append(simulate_energy(tr, cfg, pw, name=name))
            bar.advance(task)
    ref = results[0]
    rows = [r.to_dict() | {"energy_saved": 1 - r.energy_kwh / ref.energy_kwh,
                           "avg_jct_change": r.metrics.avg_jct_s / ref.metrics.avg_jct_s - 1} for r in results]
    if as_json:
        print_json({"jobs": len(tr), "gpus": gpus, "runs": rows})
        return
    console.print(table(f"{len(tr)} jobs on {gpus} GPUs", ["run", "MWh", "saved", "peak kW", "nodes off",
                                                           "wake-ups", "avg JCT s", "JCT change"],
                        [(r["name"], f"{r['energy_kwh'] / 1000:.2f}", f"{r['energy_saved']:+.1%}",
                          f"{r['peak_kw']:.0f}", f"{r['off_share']:.0%}", r["wakeups"], f"{r['avg_jct_s']:,.0f}",
                          f"{r['avg_jct_change']:+.1%}") for r in rows], no_wrap=["run"]))


def register(app: typer.Typer) -> None:
    """Add the energy commands."""
    app.add_typer(energy_app, name="energy")
