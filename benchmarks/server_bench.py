"""Server benchmark: p50/p95/p99 latency, requests/s and CPU per request of granary server's list and detail
endpoints at 32 concurrent clients, on a SQLite and a PostgreSQL catalog, next to the floor (a bare FastAPI app
serving the same bodies from memory, benchmarks/server_floor.py), and the dashboard overview's paint time in
headless Chromium, in one run.

    .venv/bin/python benchmarks/server_bench.py [--catalog sqlite,postgres] [--versions 10000] [--jobs 100000]
                                                [--audit 1000000] [--seconds 10] [--connections 32] [--workers N]

Seeds a fresh catalog per backend (bulk inserts: versions over 100 datasets, jobs, a hash-chained audit log; the
PostgreSQL one in a database created for the run and dropped after it), starts `granary server` (tokens mode: every
request authenticates and is authorised; --workers, default one per core) and the floor app with as many workers,
and drives each endpoint of each with wrk (apt-get install wrk) at 32 connections (closed loop: each client sends
its next request when the last is answered), the two alternating endpoint by endpoint. CPU per request is the CPU
time of the server's processes (and their children: PostgreSQL's backends are not counted) over the requests served.
Times the overview in headless Chromium (first contentful paint and the time until its data is drawn). Prints a
table and writes benchmarks/out/server_bench.json. Targets (issue 12): p99 < 50 ms on SQLite and PostgreSQL;
overview < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"
PG_ADMIN = os.environ.get("GRANARY_TEST_PG_URL", "postgresql://127.0.0.1:5432/test")
sys.path.insert(0, str(ROOT.parent))


def seed(url: str, home: Path, *, n_versions: int, n_jobs: int, n_audit: int) -> dict[str, Any]:
    """Bulk-fill a catalog; returns the admin token and ids to ask for."""
    import sqlalchemy as sa

    from granary.catalog import open_catalog
    from granary.catalog import tables as ct
    from granary.config import Settings
    from granary.sched import tables as st
    from granary.secure import tables as sec
    from granary.secure.audit import GENESIS, canonical, chain_hash
    from granary.secure.hooks import SecureHooks

    settings = Settings.from_env(environ={}, home=home, catalog_url=url)
    catalog = open_catalog(url)
    now = time.time()
    n_ds = 100
    with catalog.write() as conn:
        conn.execute(ct.datasets.insert(), [dict(name=f"ds{i:03d}", kind="documents", default_branch="main",
                                                 description=f"dataset {i}", metadata="{}", created_at=now,
                                                 created_by="bench") for i in range(n_ds)])
        vs = [dict(id=uuid.uuid4().hex + uuid.uuid4().hex, dataset=f"ds{i % n_ds:03d}", kind="documents",
                   manifest_key="-", parents="[]", num_rows=1000 + i, num_bytes=10**6 + i, num_shards=1,
                   num_tokens=None, message=f"commit {i}", author="bench", created_at=now - n_versions + i,
                   state="live") for i in range(n_versions)]
        for k in range(0, len(vs), 5000):
            conn.execute(ct.versions.insert(), vs[k:k + 5000])
        conn.execute(ct.refs.insert(), [dict(dataset=f"ds{i:03d}", kind="branch", name="main",
                                             version_id=vs[-n_ds + i]["id"], updated_at=now) for i in range(n_ds)])
        spec = json.dumps({"name": "train", "tenant": "default", "command": "true", "gpus_per_replica": 1,
                           "replicas": 1})
        for k in range(0, n_jobs, 10000):
            conn.execute(st.jobs.insert(), [dict(
                id=f"job{i:08d}", name=f"train-{i}", tenant="default", spec=spec, state="pending",
                reason="waiting for 1 GPU", accepted=True, cancel_requested=False, submit_time=now - n_jobs + i,
                attempt=0, node_restarts=0, job_restarts=0, preemptions=0, attained_gpu_s=0.0, run_s=0.0,
                not_before=0.0, resumed_step=None, first_start=None, finish_time=None, updated_at=now)
                for i in range(k, min(n_jobs, k + 10000))])
    prev = GENESIS
    batch: list[dict[str, Any]] = []
    for seq in range(1, n_audit + 1):
        at, details = now - n_audit + seq, "{}"
        text = canonical(seq, at, "bench", "read", f"ds{seq % n_ds:03d}", "obj", "ok", "bench", details)
        prev = chain_hash(prev, text)
        batch.append(dict(seq=seq, at=at, principal="bench", action="read", dataset=f"ds{seq % n_ds:03d}",
                          object="obj", outcome="ok", origin="bench", details=details, hash=prev))
        if len(batch) == 20000 or seq == n_audit:
            with catalog.write() as conn:
                conn.execute(sec.audit.insert(), batch)
            batch = []
    hooks = SecureHooks.from_settings(settings, environ={})
    guard = hooks.guard
    guard.add_principal("bench-admin", tenant="default")
    guard.grant("bench-admin", "admin", tenant="default")
    token = guard.issue_token("bench-admin", scopes=("read", "write", "admin")).secret
    with catalog.read() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(sec.audit)).scalar()
    settle(catalog)
    catalog.dispose()
    return {"token": token, "job": f"job{n_jobs // 2:08d}", "audit_rows": count}


def settle(catalog: Any) -> None:
    """Leave the freshly bulk-filled catalog as a settled one is: SQLite's write-ahead log folded into the
    database (a reader otherwise searches a WAL of a million fresh records for every page), PostgreSQL's
    statistics gathered and visibility map set (autovacuum would do it some minutes later)."""
    with catalog.engine.connect() as conn:
        if catalog.is_sqlite:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], env: dict[str, str], port: int, health: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT.parent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[:3]} exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{health}", timeout=5).status_code < 500:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    raise SystemExit(f"{cmd[:3]} did not start: {log.read_text()[-3000:]}")


# wrk's own report has no p95: its Lua `done` hook prints the percentiles asked for (microseconds)
WRK_LUA = """
done = function(summary, latency, requests)
  io.write(string.format("PCTL %d %d %d %d %d %d %d\\n", latency:percentile(50), latency:percentile(95),
    latency:percentile(99), summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        me = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(me)
        times[me] = (int(fields[11]) + int(fields[12])) / tick
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        total += times.get(p, 0.0)
        stack.extend(children.get(p, []))
    return total


def wrk(url: str, *, seconds: int, connections: int, token: str | None, script: Path,
        pid: int | None = None) -> dict[str, float]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    cpu0 = cpu_s(pid) if pid else 0.0
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_s(pid) - cpu0 if pid else 0.0
    m = re.search(r"^PCTL (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    if not m:
        raise SystemExit(f"cannot read the latencies from wrk:\n{out}")
    p50, p95, p99, n, duration_us, status_errors, socket_errors = (int(x) for x in m.groups())
    return {"p50_ms": p50 / 1e3, "p95_ms": p95 / 1e3, "p99_ms": p99 / 1e3, "requests": n,
            "rps": round(n / (duration_us / 1e6), 1), "errors": status_errors + socket_errors,
            "cpu_ms_per_request": round(1e3 * cpu / max(n, 1), 3)}


def dashboard_paint(url: str, token: str) -> dict[str, float] | None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not Path(chromium).exists():
        return None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        ctx = browser.new_context(viewport={"width": 1366, "height": 900})
        ctx.add_init_script(f"localStorage.setItem('granary.token', {token!r})")
        page = ctx.new_page()
        page.goto(f"{url}/ui/")  # warm: the static files are cached as a returning user has them
        page.wait_for_selector("main[data-ready='1']", timeout=60000)
        runs = []
        for _ in range(5):
            page.goto(f"{url}/ui/?{time.time()}")
            page.wait_for_selector("main[data-ready='1']", timeout=60000)
            runs.append(page.evaluate("""() => ({
                fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || 0,
                ready: performance.now() })"""))
        browser.close()
    runs.sort(key=lambda r: r["ready"])
    mid = runs[len(runs) // 2]
    return {"first_contentful_paint_ms": round(mid["fcp"], 1), "overview_drawn_ms": round(mid["ready"], 1)}


def run_backend(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"server-bench-{name}-"))
    t0 = time.perf_counter()
    facts = seed(url, home, n_versions=args.versions, n_jobs=args.jobs, n_audit=args.audit)
    print(f"[{name}] seeded {args.versions} versions, {args.jobs} jobs, {facts['audit_rows']} audit records "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    env = {**os.environ, "GRANARY_HOME": str(home), "GRANARY_CATALOG_URL": url, "GRANARY_AUTH": "tokens"}
    port, floor_port = free_port(), free_port()
    server = start([sys.executable, "-m", "granary.cli.main", "server", "--port", str(port),
                    "--workers", str(args.workers)], env, port,
                   "/api/v1/health", home / "granary.log")
    script = home / "pctl.lua"
    script.write_text(WRK_LUA)
    endpoints = [("list datasets", "/datasets?limit=50"), ("list versions", "/versions?limit=50"),
                 ("list versions of a dataset", "/datasets/ds007/versions?limit=50"), ("list jobs", "/jobs?limit=50"),
                 ("list audit", "/audit?limit=50"), ("dataset detail", "/datasets/ds007"),
                 ("job detail", f"/jobs/{facts['job']}"), ("overview", "/overview")]
    bodies = home / "bodies"
    bodies.mkdir()
    for i, (_label, path) in enumerate(endpoints):
        answer = httpx.get(f"http://127.0.0.1:{port}/api/v1{path}", timeout=60,
                           headers={"Authorization": f"Bearer {facts['token']}"})
        answer.raise_for_status()
        (bodies / f"{i}.json").write_bytes(answer.content)
    floor = start([sys.executable, str(ROOT / "server_floor.py"), "--bodies", str(bodies), "--port",
                   str(floor_port), "--workers", str(args.workers)], env, floor_port, "/health", home / "floor.log")
    results: list[dict[str, Any]] = []
    paint = None
    try:
        for i, (label, path) in enumerate(endpoints):
            r = wrk(f"http://127.0.0.1:{port}/api/v1{path}", seconds=args.seconds, connections=args.connections,
                    token=facts["token"], script=script, pid=server.pid)
            f = wrk(f"http://127.0.0.1:{floor_port}/body/{i}", seconds=args.seconds, connections=args.connections,
                    token=None, script=script, pid=floor.pid)
            results.append({"endpoint": label, "path": path, "body_bytes": (bodies / f"{i}.json").stat().st_size,
                            **r, "floor": f, "load": os.getloadavg()[0]})
            print(f"[{name}] {label:27s} p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  {r['rps']:6.0f} "
                  f"req/s  {r['cpu_ms_per_request']:5.2f} CPU ms/req  ({r['errors']} errors) | floor p99 "
                  f"{f['p99_ms']:6.1f} ms {f['rps']:6.0f} req/s {f['cpu_ms_per_request']:5.2f} CPU ms/req | load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
        if not args.no_browser:
            paint = dashboard_paint(f"http://127.0.0.1:{port}", facts["token"])
            if paint:
                print(f"[{name}] dashboard overview: first contentful paint {paint['first_contentful_paint_ms']} "
                      f"ms, data drawn at {paint['overview_drawn_ms']} ms", flush=True)
    finally:
        for proc in (server, floor):
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(home, ignore_errors=True)
    return {"catalog": name, "endpoints": results, "dashboard": paint}


def table(report: dict[str, Any]) -> str:
    """The results as a Markdown table (docs/server.md's figures)."""
    lines = ["| catalog | endpoint | p50 ms | p95 ms | p99 ms | req/s | CPU ms/req | floor p99 ms | floor req/s | "
             "floor CPU ms/req | req/s / floor | errors | p99 < 50 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in report["backends"]:
        for r in b["endpoints"]:
            f = r["floor"]
            lines.append(f"| {b['catalog']} | {r['endpoint']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {r['rps']:.0f} | {r['cpu_ms_per_request']:.2f} | {f['p99_ms']:.1f} | "
                         f"{f['rps']:.0f} | {f['cpu_ms_per_request']:.2f} | {r['rps'] / max(f['rps'], 1):.2f} | "
                         f"{r['errors']} | {'yes' if r['p99_ms'] < 50 else 'no'} |")
    for b in report["backends"]:
        if b["dashboard"]:
            d = b["dashboard"]
            lines.append(f"\ndashboard overview ({b['catalog']}): first contentful paint "
                         f"{d['first_contentful_paint_ms']} ms, data drawn at {d['overview_drawn_ms']} ms "
                         f"(target < 1000 ms: {'met' if d['overview_drawn_ms'] < 1000 else 'missed'})")
    return "\n".join(lines)


def pg_database() -> str:
    import psycopg

    name = f"granary_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"


def drop_pg(url: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", default="sqlite,postgres")
    p.add_argument("--versions", type=int, default=10_000)
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--audit", type=int, default=1_000_000)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="worker processes of granary server and of the floor (default: one per core)")
    p.add_argument("--no-browser", action="store_true", help="skip the dashboard timing")
    args = p.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    report: dict[str, Any] = {"args": vars(args), "load_at_start": load, "backends": []}
    for name in args.catalog.split(","):
        if name == "postgres":
            url = pg_database()
            try:
                report["backends"].append(run_backend(name, url, args))
            finally:
                drop_pg(url)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                report["backends"].append(run_backend(name, f"sqlite:///{tmp}/catalog.db", args))
    report["load_at_end"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "server_bench.json").write_text(json.dumps(report, indent=2))
    print("\n" + table(report))
    print(f"\nload average at end: {report['load_at_end'][0]:.2f} {report['load_at_end'][1]:.2f}; written to "
          f"{OUT / 'server_bench.json'}")


if __name__ == "__main__":
    main()
