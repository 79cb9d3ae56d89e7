"""`granary sched ...`, `granary submit`, `granary jobs`, `granary job`, `granary cancel`, `granary nodes`,
`granary drain`: thin commands over granary.sched."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from granary.cli.output import console, err_console, fail, print_json, table
from granary.errors import GranaryError

if TYPE_CHECKING:
    from collections.abc import Callable

    from granary.catalog import Catalog
    from granary.sched.journal import JobRow
    from granary.sched.model import JobSpec

sched_app = typer.Typer(help="Run the scheduler (controller, agent) and its simulator.", no_args_is_help=True)


TRACE_SOURCE = ("The Philly trace used in docs/sched.md is philly_pollux_jobs.csv: Microsoft's Philly traces "
                "(msr-fiddle/philly-traces, CC BY 4.0) as processed by the Pollux OSDI'21 artifact "
                "(petuum/adaptdl); in this repository's setup it is ../shared/traces/philly_pollux_jobs.csv.")


def _catalog() -> Catalog:
    from granary.catalog import open_catalog
    from granary.config import Settings

    return open_catalog(Settings.from_env().catalog_url)


def _ago(ts: float | None) -> str:
    """A time as people read it: the clock time today, else the date and time (local time zone)."""
    if ts is None:
        return ""
    same_day = time.localtime(ts)[:3] == time.localtime()[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", time.localtime(ts))


def _iso(ts: float | None) -> str | None:
    """A time for --json: ISO 8601 in UTC."""
    import datetime

    return None if ts is None else datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")


def _unfit(catalog: Catalog) -> Callable[[JobSpec], str | None]:
    """A function telling why a job can never fit the registered nodes (None when it can)."""
    from granary.sched.fit import never_fits
    from granary.sched.journal import list_nodes
    from granary.sched.model import NodeSpec

    nodes = [NodeSpec(name=n["name"], gpus=n["gpus"], cpus=n["cpus"], memory_bytes=n["memory_bytes"],
                      labels=n["labels"]) for n in list_nodes(catalog)]
    return lambda spec: never_fits(spec, nodes)


def _reason(row: JobRow, unfit: Callable[[JobSpec], str | None]) -> str:
    """A job's reason; a pending job that no node can ever hold says why."""
    if row.state == "pending":
        from granary.sched.model import JobSpec

        why = unfit(JobSpec.from_dict(row.spec))
        if why:
            return f"cannot run on any registered node: {why}"
    return row.reason


@sched_app.command("up")
def up(
    policy: str = typer.Option("mlfq", help="Scheduling policy (see docs/sched.md)."),
    placement: str = typer.Option("topology", help="Placement strategy."),
    agent: bool = typer.Option(True, help="Also run a local agent for this machine."),
    node: str = typer.Option(None, help="Node name of the local agent (default: host name)."),
    gpus: int = typer.Option(None, help="GPUs of the local agent (default: detected)."),
    tick_s: float = typer.Option(0.5, help="Controller tick."),
    heartbeat_timeout_s: float = typer.Option(10.0, help="Mark a node down after this much silence."),
    backoff_s: float = typer.Option(5.0, help="First retry delay (doubles per retry)."),
    monitor_port: int = typer.Option(-1, help="Also run the monitor's node agent on this port, e.g. 9464 (-1: "
                                              "don't); jobs push to it (docs/watch.md)."),
    max_busy_gpus: int = typer.Option(None, help="Power cap: at most this many GPUs busy at once (see "
                                                 "docs/watch.md#energy)."),
) -> None:
    """Run the controller (and a local agent) until interrupted."""
    import threading

    from granary.config import Settings
    from granary.sched.agent import Agent, AgentConfig, detect_node
    from granary.sched.controller import Controller, ControllerConfig
    from granary.sched.lease import Lease
    from granary.sched.state import SchedulerConfig

    lease: Lease | None = None
    stop = threading.Event()
    try:
        catalog = _catalog()
        cfg = ControllerConfig(tick_s=tick_s, scheduler=SchedulerConfig(
            policy=policy, placement=placement, heartbeat_timeout_s=heartbeat_timeout_s,
            backoff_base_s=backoff_s, backoff_max_s=max(600.0, backoff_s), max_busy_gpus=max_busy_gpus))
        controller = Controller(catalog, cfg)
        lease = Lease(catalog, cfg.lease_s)
        lease.acquire(time.time())  # before starting an agent: a second `sched up` changes nothing
        threads = []
        if agent:
            spec = detect_node(node, gpus=gpus)
            work = Settings.from_env().home / "sched" / "attempts"
            a = Agent(catalog, AgentConfig(node=spec, work_dir=work))
            threads.append(threading.Thread(target=a.run, args=(stop,), daemon=True, name="agent"))
            console.print(f"agent: node {spec.name}, {spec.gpus} GPUs, {spec.cpus:g} CPUs")
            if monitor_port >= 0:
                from granary.cli.monitor import start_node_monitor

                start_node_monitor(spec.name, monitor_port, stop)
        for th in threads:
            th.start()
        console.print(f"controller: policy {policy}, placement {placement}, catalog {catalog.url}")
        controller.run(stop, lease=lease)
    except KeyboardInterrupt:
        stop.set()
    except GranaryError as exc:
        fail(exc)
    finally:
        # Ctrl-C can land after the lease is taken but before the controller's loop (which releases it on the
        # way out) has started; release it here too (a no-op when the loop already did), so the next controller
        # starts at once instead of after the lease expires
        if lease is not None:
            lease.release()


@sched_app.command("agent")
def agent_cmd(
    node: str = typer.Option(None, help="Node name (default: host name)."),
    gpus: int = typer.Option(None, help="GPUs (default: detected)."),
    label: list[str] = typer.Option([], help="Node label key=value (repeatable), e.g. rack=r1."),
    work_dir: Path = typer.Option(None, help="Attempt directories (default: $GRANARY_HOME/sched/attempts)."),
    heartbeat_s: float = typer.Option(1.0, help="Seconds between heartbeats."),
    monitor_port: int = typer.Option(-1, help="Also run the monitor's node agent on this port, e.g. 9464 (-1: "
                                              "don't); jobs push to it (docs/watch.md)."),
) -> None:
    """Run a node agent only (the controller runs elsewhere, sharing the catalog)."""
    from granary.config import Settings
    from granary.sched.agent import Agent, AgentConfig, detect_node

    labels = dict(item.split("=", 1) for item in label if "=" in item)
    try:
        spec = detect_node(node, gpus=gpus, labels=labels)
        work = work_dir or Settings.from_env().home / "sched" / "attempts"
        if monitor_port >= 0:
            import threading

            from granary.cli.monitor import start_node_monitor

            start_node_monitor(spec.name, monitor_port, threading.Event())
        Agent(_catalog(), AgentConfig(node=spec, work_dir=work, heartbeat_s=heartbeat_s)).run()
    except KeyboardInterrupt:
        pass
    except GranaryError as exc:
        fail(exc)


@sched_app.command("simulate")
def simulate_cmd(
    trace: Path = typer.Option(None, envvar="GRANARY_TRACE", help="Trace CSV (timestamp, duration, num_gpus[, "
                               "cluster]); a relative path is read from the working directory. Default: "
                               "$GRANARY_TRACE."),
    gpus: int = typer.Option(640, help="Cluster size in GPUs."),
    policy: str = typer.Option("mlfq", help="Policy name."),
    placement: str = typer.Option("topology", help="Placement strategy."),
    limit: int = typer.Option(0, help="Replay only the first N jobs (0: all)."),
    node_mtbf_h: float = typer.Option(0.0, help="Inject node failures with this MTBF per node (hours)."),
    checkpoint_min: float = typer.Option(0.0, help="Checkpoint interval in minutes (with failures)."),
    cost_model: str = typer.Option("realistic", help="realistic: speed depends on GPU count, placement, batch, GPU "
                                   "type and neighbours, restarts and checkpoints cost time; ideal: jobs run at "
                                   "trace speed anywhere and restart for free."),
    disable_cost: list[str] = typer.Option([], "--disable-cost", help="Switch one cost of the realistic model off "
                                           "(scaling, restart, checkpoint, interference, hetero); repeatable."),
    elastic: bool = typer.Option(True, help="Trace jobs are resizable (used by resizing policies like pollux)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Replay a job trace through the real scheduler code and print the metrics."""
    from granary.sched.simulator import simulate
    from granary.sched.trace import load_trace

    if trace is None:
        fail(f"no trace given: pass --trace PATH or set GRANARY_TRACE. {TRACE_SOURCE}")
    try:
        if not trace.is_file():
            fail(f"no trace at {trace} (resolved from {Path.cwd()}: {trace.resolve()}). {TRACE_SOURCE}")
        tr = load_trace(trace)
        if limit:
            tr = tr.slice(0, limit)
        t0 = time.process_time()
        m = simulate(tr, gpus=gpus, policy=policy, placement=placement,
                     node_mtbf_s=node_mtbf_h * 3600 or None, checkpoint_interval_s=checkpoint_min * 60 or None,
                     cost_model=cost_model, disabled_costs=tuple(disable_cost), elastic=elastic)
        cpu_s = time.process_time() - t0
    except (GranaryError, ValueError) as exc:
        fail(exc if isinstance(exc, GranaryError) else str(exc))
    if as_json:
        print_json({"policy": policy, "gpus": gpus, "jobs": len(tr), "cpu_s": cpu_s, **m.to_dict()})
        return
    rows = [(k, f"{v:,.3f}" if isinstance(v, float) else v) for k, v in m.to_dict().items()]
    console.print(table(f"{policy} on {gpus} GPUs, {len(tr)} jobs ({cpu_s:.1f} s CPU)", ["metric", "value"], rows))


def register(app: typer.Typer) -> None:
    """Add the scheduler commands to the main app."""
    app.add_typer(sched_app, name="sched")

    @app.command("submit")
    def submit(
        spec_file: Path = typer.Option(None, "--file", "-f", help="YAML job spec (one job or `jobs: [...]`)."),
        name: str = typer.Option(None, help="Job name (for a command given on the line)."),
        tenant: str = typer.Option("default", help="Tenant / queue."),
        gpus: int = typer.Option(0, help="GPUs per replica."),
        replicas: int = typer.Option(1, help="Replicas (a gang)."),
        priority: int = typer.Option(0, help="Priority (priority policy)."),
        checkpoint_dir: str = typer.Option(None, help="Checkpoint directory for restarts."),
        max_restarts: int = typer.Option(0, help="Retries after the job fails."),
        executor: str = typer.Option("local", help="local, slurm, ray or k8s."),
        resizable: bool = typer.Option(False, help="The scheduler may resize the job while it runs (elastic; "
                                       "the `pollux` policy does)."),
        min_gpus: int = typer.Option(None, help="Elastic: the fewest GPUs (default 1)."),
        max_gpus: int = typer.Option(None, help="Elastic: the most GPUs (default: --gpus x --replicas)."),
        batch_size: int = typer.Option(None, help="Preferred global batch size."),
        min_batch_size: int = typer.Option(None, help="Smallest global batch size the scheduler may choose."),
        max_batch_size: int = typer.Option(None, help="Largest global batch size the scheduler may choose."),
        as_json: bool = typer.Option(False, "--json", help="Print the job ids as JSON."),
        command: list[str] = typer.Argument(None, help="Command to run (after --)."),
    ) -> None:
        """Submit a command or a YAML job spec."""
        from granary.sched.model import JobSpec
        from granary.sched.spec import load_specs, submit_specs

        try:
            if spec_file is not None:
                specs = load_specs(spec_file)
            elif command:
                specs = [JobSpec(name=name or Path(command[0]).name, tenant=tenant, command=tuple(command),
                                 gpus_per_replica=gpus, replicas=replicas, priority=priority,
                                 checkpoint_dir=checkpoint_dir, max_restarts=max_restarts, executor=executor,
                                 resizable=resizable, min_gpus=min_gpus, max_gpus=max_gpus, batch_size=batch_size,
                                 min_batch_size=min_batch_size, max_batch_size=max_batch_size)]
            else:
                fail("give a command after `--` or a spec with --file")
            import dataclasses
            import os

            # like sbatch: a job without a working directory runs where it was submitted
            specs = [s if s.workdir else dataclasses.replace(s, workdir=os.getcwd()) for s in specs]
            catalog = _catalog()
            ids = submit_specs(catalog, specs)
        except GranaryError as exc:
            fail(exc)
        unfit = _unfit(catalog)
        for spec in specs:
            why = unfit(spec)
            if why:
                err_console.print(f"[yellow]warning:[/] job {spec.name} ({ids[spec.name]}) cannot run on any "
                                  f"registered node: {why}; it waits until such a node registers", highlight=False,
                                  soft_wrap=True)
        if as_json:
            print_json(ids)
        else:
            console.print(table("submitted", ["name", "job id"], ids.items()))

    @app.command("jobs")
    def jobs(
        all_: bool = typer.Option(False, "--all", help="Include finished jobs."),
        limit: int = typer.Option(100, help="At most this many jobs."),
        as_json: bool = typer.Option(False, "--json", help="JSON output."),
    ) -> None:
        """List jobs, newest first."""
        from granary.sched.journal import list_jobs
        from granary.sched.model import TERMINAL

        catalog = _catalog()
        states = None if all_ else ("pending", "admitted", "running", "preempted")
        rows = list_jobs(catalog, states=states, limit=limit)
        unfit = _unfit(catalog)
        if as_json:
            print_json([r.to_dict() | {"reason": _reason(r, unfit), "submit_time_iso": _iso(r.submit_time)}
                        for r in rows])
            return
        console.print(table(None, ["id", "name", "tenant", "state", "attempt", "submitted", "reason"],
                            [(r.id, r.name, r.tenant, r.state, r.attempt, _ago(r.submit_time), _reason(r, unfit))
                             for r in rows]))
        if not all_:
            hidden = len(list_jobs(catalog, states=tuple(sorted(TERMINAL)), limit=limit))
            if hidden:
                console.print(f"{hidden}{'+' if hidden >= limit else ''} finished job(s) not shown: "
                              "granary jobs --all lists them", highlight=False)

    @app.command("job")
    def job(job_id: str, as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
        """A job with its event history and attempts."""
        from granary.sched.journal import get_job

        try:
            row, events, attempts = get_job(_catalog(), job_id)
        except GranaryError as exc:
            fail(exc)
        if as_json:
            print_json({"job": row.to_dict(), "events": events, "attempts": attempts})
            return
        console.print(f"[bold]{row.id}[/] {row.name} ({row.tenant}): {row.state} - {_reason(row, _unfit(_catalog()))}",
                      highlight=False)
        console.print(table("events", ["time", "from", "to", "reason", "correlation"],
                            [(_ago(e["at"]), e["from_state"], e["to_state"], e["reason"], e["correlation_id"])
                             for e in events]))
        console.print(table("attempts", ["attempt", "replica", "node", "gpus", "state", "exit", "resumed step",
                                         "log"],
                            [(a["attempt"], a["replica"], a["node"], a["gpu_ids"], a["state"], a["exit_code"],
                              a["resumed_step"], a["log_path"]) for a in attempts]))

    @app.command("cancel")
    def cancel(job_ids: list[str], as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
        """Cancel jobs (running ones get SIGTERM, then SIGKILL after their grace period)."""
        from granary.sched.journal import request_cancel

        catalog = _catalog()
        try:
            for job_id in job_ids:
                request_cancel(catalog, job_id)
                if not as_json:
                    console.print(f"cancel requested: {job_id}")
        except GranaryError as exc:
            fail(exc)
        if as_json:
            print_json({"cancel_requested": job_ids})

    @app.command("nodes")
    def nodes(as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
        """List nodes with status, GPUs in use and last heartbeat."""
        from granary.sched.journal import list_nodes

        rows = list_nodes(_catalog())
        if as_json:
            print_json([n | {"last_heartbeat_iso": _iso(n["last_heartbeat"]),
                             "registered_at_iso": _iso(n.get("registered_at"))} for n in rows])
            return
        console.print(table(None, ["node", "status", "gpus used", "cpus", "labels", "heartbeat", "reason"],
                            [(n["name"], n["status"] + (" (drain requested)" if n["drain_requested"] else ""),
                              f"{n['gpus_used']}/{n['gpus']}", n["cpus"], n["labels"], _ago(n["last_heartbeat"]),
                              n["reason"]) for n in rows]))

    @app.command("drain")
    def drain(node: str, undo: bool = typer.Option(False, "--undo", help="Put the node back in service."),
              as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
        """Stop placing jobs on a node (running jobs finish); --undo reverses it."""
        from granary.sched.journal import request_drain

        try:
            request_drain(_catalog(), node, drained=not undo)
        except GranaryError as exc:
            fail(exc)
        if as_json:
            print_json({"node": node, "drain_requested": not undo})
            return
        console.print(f"{'undrain' if undo else 'drain'} requested: {node}")
