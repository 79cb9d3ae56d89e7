"""Gateway benchmark: proxy overhead against nginx and a bare aiohttp proxy (benchmarks/bare_proxy.py), 1,000 SSE
streams, routing quality on 8 simulated LLM servers, and failover when a backend is killed. Real processes on
127.0.0.1; the overhead and routing parts run several rounds and report each round and the median.

Usage: .venv/bin/python benchmarks/gateway_bench.py [--parts overhead,sse,routing,slow,failover] [--seconds 4]
       [--rounds 3] [--policies round_robin,least_request,prefix_aware]
Needs nginx and wrk from Debian (`apt-get install -y nginx wrk`); the overhead part is skipped without them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

PY = sys.executable
TMP = Path(tempfile.mkdtemp(prefix="gwbench-"))
PROCS: list[subprocess.Popen[bytes]] = []


def start(args: list[str], name: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a child that prints one JSON line once ready."""
    log = open(TMP / f"{name}.log", "wb")  # noqa: SIM115
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                         env={**os.environ, "GRANARY_HOME": str(TMP / "home")})
    PROCS.append(p)
    line = p.stdout.readline() if p.stdout else b""
    if not line:
        raise SystemExit(f"{name} did not start: {(TMP / f'{name}.log').read_text()}")
    return p, json.loads(line)


def sim(name: str, **opts: Any) -> tuple[subprocess.Popen[bytes], str]:
    args = [PY, "-m", "granary.serve.sim"]
    for k, v in {"port": 0, **opts}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    p, info = start(args, name)
    return p, info["url"]


def gateway(name: str, config: dict[str, Any]) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    path = TMP / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "port": 0, "admin_port": 0, **config}))
    return start([PY, "-m", "granary.cli.main", "gateway", "up", "--config", str(path)], name)


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- overhead -----------------------------------------------------------------------------------------
NGINX_BACKEND = """worker_processes 1; daemon off; pid {d}/b.pid; error_log {d}/b.err;
events {{ worker_connections 4096; }}
http {{ access_log off; server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json;
return 200 '{{"id":"cmpl-1","object":"text_completion","choices":[{{"text":"ok"}}]}}'; }} }} }}"""
NGINX_PROXY = """worker_processes {workers}; daemon off; pid {d}/p.pid; error_log {d}/p.err;
events {{ worker_connections 4096; }}
http {{ access_log off; upstream be {{ server 127.0.0.1:{backend}; keepalive 256; }}
server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://be; proxy_http_version 1.1;
proxy_set_header Connection ""; proxy_buffering off; }} }} }}"""
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk(url: str, conns: int, seconds: float) -> dict[str, float]:
    cmd = ["wrk", "-t1" if conns < 64 else "-t2", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency",
           "--timeout", "5s", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "requests": float(total.group(1)) if total else 0.0, "p50_ms": float(p50.group(1)) * unit,  # type: ignore[union-attr]
            "timeouts": float(errors.group(4)) if errors else 0.0,
            "errors": (sum(float(errors.group(i)) for i in (1, 2, 3)) if errors else 0.0)
            + (float(non2xx.group(1)) if non2xx else 0.0)}


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def overhead(seconds: float, workers: int = 2, rounds: int = 3) -> dict[str, Any]:
    """Every target at c=1, 64 and 256, ``rounds`` times interleaved (so load swings hit all targets alike);
    the summary takes each figure's median over the rounds."""
    if not (shutil.which("nginx") and shutil.which("wrk")):
        print("overhead: skipped (needs nginx and wrk: apt-get install -y nginx wrk)")
        return {}
    bport, pport = free_port(), free_port()
    (TMP / "b.conf").write_text(NGINX_BACKEND.format(d=TMP, port=bport))
    (TMP / "p.conf").write_text(NGINX_PROXY.format(d=TMP, port=pport, backend=bport, workers=workers))
    backend = subprocess.Popen(["nginx", "-c", str(TMP / "b.conf")])
    nginx = subprocess.Popen(["nginx", "-c", str(TMP / "p.conf")])
    PROCS.extend([backend, nginx])
    bare, binfo = start([PY, str(Path(__file__).with_name("bare_proxy.py")), f"http://127.0.0.1:{bport}",
                         "--workers", str(workers)], "bare")
    gw, ginfo = gateway("overhead", {"workers": workers, "routes": [{
        "name": "api", "path_prefix": "/", "policy": "round_robin", "health": {"interval_s": 1},
        "backends": [{"name": "b0", "url": f"http://127.0.0.1:{bport}"}]}]})
    time.sleep(1.0)
    targets = {"direct": f"http://127.0.0.1:{bport}/v1/x", "nginx": f"http://127.0.0.1:{pport}/v1/x",
               "bare-proxy": f"{binfo['url']}/v1/x", "granary": f"{ginfo['url']}/v1/x"}
    pids = {"direct": backend.pid, "nginx": nginx.pid, "bare-proxy": bare.pid, "granary": gw.pid}
    per_round: list[dict[str, Any]] = []
    for rnd in range(rounds):
        res: dict[str, Any] = {}
        for conns in (1, 64, 256):
            for name, url in targets.items():
                cpu0 = tree_cpu_s(pids[name])
                res[f"{name}@{conns}"] = r = wrk(url, conns, seconds)
                r["cpu_us_per_req"] = (tree_cpu_s(pids[name]) - cpu0) * 1e6 / max(1.0, r["requests"])
                r["load"] = loadavg()
                print(f"  round {rnd + 1} {name:11s} c={conns:<4d} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
                      f"timeouts {r['timeouts']:.0f} errors {r['errors']:.0f}  "
                      f"CPU {r['cpu_us_per_req']:6.1f} us/req  (load {r['load']})")
        per_round.append(res)
    for p in (gw, bare, nginx, backend):
        stop(p)

    def med(key: str, field: str) -> float:
        return median([r[key][field] for r in per_round])

    def ratio(f: Any) -> dict[str, Any]:
        vals = [f(r) for r in per_round]
        return {"median": round(median(vals), 3), "rounds": [round(v, 3) for v in vals]}

    summary = {
        "rounds": rounds,
        "granary/nginx throughput @64": ratio(lambda r: r["granary@64"]["rps"] / r["nginx@64"]["rps"]),
        "granary/bare-proxy throughput @64": ratio(lambda r: r["granary@64"]["rps"] / r["bare-proxy@64"]["rps"]),
        "req/s @64 median (granary, nginx, bare-proxy, direct)": [
            round(med(f"{n}@64", "rps")) for n in ("granary", "nginx", "bare-proxy", "direct")],
        "granary @256 / @64": ratio(lambda r: r["granary@256"]["rps"] / r["granary@64"]["rps"]),
        "granary timeouts @256": sum(r["granary@256"]["timeouts"] for r in per_round),
        "added p50 @1 median, ms (granary, nginx, bare-proxy)": [
            round(median([r[f"{n}@1"]["p50_ms"] - r["direct@1"]["p50_ms"] for r in per_round]), 3)
            for n in ("granary", "nginx", "bare-proxy")],
        "CPU us per proxied request @64 median (granary, nginx, bare-proxy)": [
            round(med(f"{n}@64", "cpu_us_per_req"), 1) for n in ("granary", "nginx", "bare-proxy")],
        "CPU us per proxied request @256 median (granary, nginx, bare-proxy)": [
            round(med(f"{n}@256", "cpu_us_per_req"), 1) for n in ("granary", "nginx", "bare-proxy")],
    }
    return {"runs": per_round, "summary": summary}


# -- SSE ------------------------------------------------------------------------------------------------
async def sse_streams(url: str, model: str, n: int, tokens: int) -> tuple[int, int, int]:
    """n concurrent streams; returns (streams complete, chunks received, failed streams)."""
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        async def one() -> tuple[int, bool]:
            body = {"model": model, "prompt": "hello", "max_tokens": tokens, "stream": True}
            got, done = 0, False
            try:
                async with s.post(f"{url}/v1/completions", json=body) as r:
                    buf = b""
                    async for chunk in r.content.iter_any():
                        buf += chunk
                        got += chunk.count(b"data: {")
                        done = done or b"data: [DONE]" in buf[-64:]
            except aiohttp.ClientError:
                return got, False
            return got, done

        results = await asyncio.gather(*(one() for _ in range(n)))
    return sum(d for _, d in results), sum(g for g, _ in results), sum(not d for _, d in results)


def sse(n: int = 1000, tokens: int = 20) -> dict[str, Any]:
    sims = [sim(f"sse{i}", model="m", per_token_ms=20, max_concurrency=n) for i in range(2)]
    gw, info = gateway("sse", {"workers": 2, "admission": {"max_in_flight": 4096}, "routes": [{
        "name": "chat", "models": ["m"], "policy": "least_request",
        "backends": [{"name": f"s{i}", "url": u} for i, (_, u) in enumerate(sims)]}]})
    t0 = time.monotonic()
    complete, chunks, failed = asyncio.run(sse_streams(info["url"], "m", n, tokens))
    wall = time.monotonic() - t0
    print(f"  {n} streams x {tokens} chunks: {complete} complete, {chunks}/{n * tokens} chunks, {failed} failed, "
          f"{wall:.1f} s (load {loadavg()})")
    stop(gw)
    for p, _ in sims:
        stop(p)
    return {"streams": n, "complete": complete, "chunks": chunks, "expected_chunks": n * tokens, "failed": failed,
            "lost_chunks": n * tokens - chunks, "wall_s": round(wall, 2)}


# -- routing quality ------------------------------------------------------------------------------------
def conversations(n: int, seed: int = 0) -> list[list[list[dict[str, str]]]]:
    """n multi-turn chats: 4 shared system prompts, a long per-chat document, 4 turns each."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(500)]
    systems = [" ".join(rng.choices(words, k=300)) for _ in range(4)]
    chats = []
    for c in range(n):
        msgs = [{"role": "system", "content": systems[c % 4]},
                {"role": "user", "content": f"chat {c}: " + " ".join(rng.choices(words, k=700))}]
        turns = []
        for t in range(4):
            turns.append([dict(m) for m in msgs])
            msgs += [{"role": "assistant", "content": " ".join(rng.choices(words, k=30))},
                     {"role": "user", "content": f"follow-up {t}: " + " ".join(rng.choices(words, k=60))}]
        chats.append(turns)
    return chats


async def chat_load(url: str, model: str, chats: list[list[list[dict[str, str]]]], clients: int,
                    stream: bool) -> list[float]:
    """Clients work through the chats turn by turn; returns TTFT (stream) or latency per request."""
    queue: asyncio.Queue[list[list[dict[str, str]]]] = asyncio.Queue()
    for c in chats:
        queue.put_nowait(c)
    out: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as s:
        async def client() -> None:
            while not queue.empty():
                chat = queue.get_nowait()
                for messages in chat:
                    t0 = time.monotonic()
                    async with s.post(f"{url}/v1/chat/completions", json={
                            "model": model, "messages": messages, "max_tokens": 8, "stream": stream}) as r:
                        if stream:
                            async for _ in r.content.iter_any():
                                out.append(time.monotonic() - t0)
                                break
                            await r.read()
                        else:
                            await r.read()
                            out.append(time.monotonic() - t0)

        await asyncio.gather(*(client() for _ in range(clients)))
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def ttft_run(policy: str, chats: list[list[list[dict[str, str]]]], clients: int, tag: str) -> dict[str, Any]:
    sims = [sim(f"r{tag}{policy}{i}", model="m", per_token_ms=2, prefill_per_token_ms=0.2, max_concurrency=8,
                kv_blocks=2048) for i in range(8)]
    gw, info = gateway(f"route-{tag}{policy}", {"workers": 2, "routes": [{
        "name": "chat", "models": ["m"], "policy": policy,
        "backends": [{"name": f"s{i}", "url": u} for i, (_, u) in enumerate(sims)]}]})
    try:
        ttft = asyncio.run(chat_load(info["url"], "m", chats, clients, stream=True))
    finally:
        stop(gw)
        for p, _ in sims:
            stop(p)
    return {"p50_ms": round(pct(ttft, 0.5) * 1e3, 1), "p90_ms": round(pct(ttft, 0.9) * 1e3, 1),
            "requests": len(ttft), "load": loadavg()}


def routing(chats_n: int = 48, clients: int = 12, rounds: int = 3,
            policies: tuple[str, ...] = ("round_robin", "least_request", "prefix_aware")) -> dict[str, Any]:
    """TTFT of each policy on the multi-turn chat workload, ``rounds`` times with the policies interleaved;
    the ratios are taken per round, and their medians reported."""
    chats = conversations(chats_n)
    per_round: list[dict[str, Any]] = []
    for rnd in range(rounds):
        res: dict[str, Any] = {}
        for policy in policies:
            res[policy] = r = ttft_run(policy, chats, clients, f"{rnd}")
            print(f"  round {rnd + 1} TTFT {policy:14s} p50 {r['p50_ms']:7.1f} ms  p90 {r['p90_ms']:7.1f} ms  "
                  f"({r['requests']} requests, load {r['load']})")
        per_round.append(res)
    out: dict[str, Any] = {"rounds": per_round}
    for policy in policies:
        out[f"{policy} p90 median (ms)"] = median([r[policy]["p90_ms"] for r in per_round])
    if "prefix_aware" in policies:
        for other, label in (("round_robin", "prefix/rr p90"), ("least_request", "prefix/least p90")):
            if other in policies:
                vals = [r["prefix_aware"]["p90_ms"] / r[other]["p90_ms"] for r in per_round]
                out[label] = {"median": round(median(vals), 3), "rounds": [round(v, 3) for v in vals]}
    return out


def slow_backend(rounds: int = 3) -> dict[str, Any]:
    """p99 latency with one of 8 backends 5x slower, ``rounds`` times with the policies interleaved; the ratios
    are taken per round, and their medians reported."""
    short = conversations(96, seed=1)
    short = [[turn[:2] for turn in chat[:1]] for chat in short]  # single-turn requests
    per_round: list[dict[str, Any]] = []
    for rnd in range(rounds):
        slow: dict[str, Any] = {}
        for policy in ("round_robin", "peak_ewma", "p2c"):
            sims = [sim(f"s{rnd}{policy}{i}", model="m", per_token_ms=4, prefill_per_token_ms=0.01,
                        max_concurrency=32, slowdown=5 if i == 0 else 1) for i in range(8)]
            gw, info = gateway(f"slow-{rnd}{policy}", {"workers": 2, "routes": [{
                "name": "chat", "models": ["m"], "policy": policy,
                "backends": [{"name": f"s{i}", "url": u} for i, (_, u) in enumerate(sims)]}]})
            try:
                lat = asyncio.run(chat_load(info["url"], "m", short * 4, 16, stream=False))
            finally:
                stop(gw)
                for p, _ in sims:
                    stop(p)
            slow[policy] = r = {"p50_ms": round(pct(lat, 0.5) * 1e3, 1), "p99_ms": round(pct(lat, 0.99) * 1e3, 1),
                                "requests": len(lat), "load": loadavg()}
            print(f"  round {rnd + 1} one backend 5x slower, {policy:12s} p50 {r['p50_ms']:7.1f} ms  "
                  f"p99 {r['p99_ms']:7.1f} ms  (load {r['load']})")
        per_round.append(slow)
    out: dict[str, Any] = {"rounds": per_round}
    for policy in ("peak_ewma", "p2c"):
        vals = [r[policy]["p99_ms"] / r["round_robin"]["p99_ms"] for r in per_round]
        out[f"{policy}/rr p99"] = {"median": round(median(vals), 3), "rounds": [round(v, 3) for v in vals]}
    return out


# -- failover -------------------------------------------------------------------------------------------
async def steady(url: str, seconds: float, clients: int, events: list[tuple[float, int]]) -> None:
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        async def client() -> None:
            while time.monotonic() < end:
                try:
                    async with s.post(f"{url}/v1/completions", json={"model": "m", "prompt": "x",
                                                                      "max_tokens": 4}) as r:
                        await r.read()
                        events.append((time.monotonic(), r.status))
                except aiohttp.ClientError:
                    events.append((time.monotonic(), 0))

        await asyncio.gather(*(client() for _ in range(clients)))


async def poll_metric(admin: str, name: str, backend: str, until: float, found: list[float]) -> None:
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < until:
            async with s.get(f"{admin}/metrics") as r:
                text = await r.text()
            val = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith(name + "{") and f'backend="{backend}"' in line)
            found.append(val)
            await asyncio.sleep(0.05)


def failover() -> dict[str, Any]:
    sims = [sim(f"f{i}", model="m", per_token_ms=2, max_concurrency=64) for i in range(4)]
    victim_port = int(sims[2][1].rsplit(":", 1)[1])
    gw, info = gateway("failover", {"workers": 2, "routes": [{
        "name": "chat", "models": ["m"], "policy": "least_request", "slow_start_s": 5,
        "health": {"interval_s": 0.5, "timeout_s": 1},
        "outlier": {"consecutive_failures": 1, "base_ejection_s": 2},
        "backends": [{"name": f"s{i}", "url": u} for i, (_, u) in enumerate(sims)]}]})
    events: list[tuple[float, int]] = []
    marks: dict[str, float] = {}

    async def scenario() -> None:
        load = asyncio.create_task(steady(info["url"], 14.0, 16, events))
        await asyncio.sleep(3.0)
        marks["kill"] = time.monotonic()
        os.killpg(sims[2][0].pid, signal.SIGKILL)
        ej: list[float] = []
        await poll_metric(info["admin_url"], "granary_gateway_backend_ejections_total", "s2",
                          time.monotonic() + 2.0, ej)
        first = next((i for i, v in enumerate(ej) if v > 0), None)
        marks["ejected_after_s"] = -1.0 if first is None else first * 0.05
        await asyncio.sleep(2.0)
        await asyncio.to_thread(sim, "f2b", port=victim_port, model="m", per_token_ms=2,
                                          max_concurrency=64)
        marks["restart"] = time.monotonic()
        back: list[float] = []
        await poll_metric(info["admin_url"], "granary_gateway_requests_total", "s2", time.monotonic() + 6.0, back)
        base = back[0]
        rejoin = next((i for i, v in enumerate(back) if v > base), None)
        marks["rejoined_after_s"] = -1.0 if rejoin is None else rejoin * 0.05
        await load

    asyncio.run(scenario())
    total = len(events)
    failed = sum(1 for _, code in events if code != 200)
    res = {"requests": total, "failed": failed, "failed_share": round(failed / max(1, total), 5),
           "ejected_within_s": marks["ejected_after_s"], "rejoined_within_s_of_restart": marks["rejoined_after_s"]}
    print(f"  kill 1 of 4 under load: {total} requests, {failed} failed ({res['failed_share']:.3%}), ejected "
          f"within {res['ejected_within_s']:.2f} s, back in traffic {res['rejoined_within_s_of_restart']:.2f} s "
          f"after restart (load {loadavg()})")
    stop(gw)
    for p, _ in sims:
        stop(p)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parts", default="overhead,sse,routing,slow,failover")
    ap.add_argument("--rounds", type=int, default=3,
                    help="Rounds of the overhead, routing and slow parts (medians reported).")
    ap.add_argument("--policies", default="round_robin,least_request,prefix_aware",
                    help="Policies of the routing part.")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--workers", type=int, default=2, help="Gateway worker processes in the overhead part.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args()
    parts = args.parts.split(",")
    out: dict[str, Any] = {"load_before": loadavg(), "cores": os.cpu_count()}
    try:
        if "overhead" in parts:
            print("overhead (small JSON responses; backend: nginx returning a constant):")
            out["overhead"] = overhead(args.seconds, args.workers, args.rounds)
        if "sse" in parts:
            print("SSE pass-through:")
            out["sse"] = sse()
        if "routing" in parts:
            print("routing quality on 8 simulated LLM servers (TTFT, multi-turn chats):")
            out["routing"] = routing(rounds=args.rounds, policies=tuple(args.policies.split(",")))
        if "slow" in parts:
            print("routing around a slow backend (8 simulated LLM servers, one 5x slower):")
            out["slow"] = slow_backend(args.rounds)
        if "failover" in parts:
            print("failover:")
            out["failover"] = failover()
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.terminate()
        for p in PROCS:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    out["load_after"] = loadavg()
    summary = {k: v.get("summary", {kk: vv for kk, vv in v.items() if kk != "rounds"})
               if isinstance(v, dict) else v for k, v in out.items()}
    print(json.dumps(summary, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
