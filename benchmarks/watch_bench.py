"""Watch benchmark: detection quality on a labelled synthetic set, the agent's cost against node_exporter and a
bare psutil loop (anchors measured in the same run), and energy-aware scheduling on the Philly trace.

    .venv/bin/python benchmarks/watch_bench.py [--runs 200] [--jobs 5000] [--samples 30]

Prints a table per part and the ratios; writes JSON to benchmarks/out/watch_bench.json. node_exporter is
Debian's prometheus-node-exporter (installed with the prometheus package); without it that anchor is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from granary.monitor.agent import NodeAgent, NodeAgentConfig
from granary.monitor.gpu import FakeNvml
from granary.monitor.synthetic import KINDS, make_dataset, score

ROOT = Path(__file__).resolve().parent
TRACE = ROOT.parent.parent / "shared" / "traces" / "philly_pollux_jobs.csv"


def detection(runs: int) -> dict[str, Any]:
    scores = score(make_dataset(runs_per_kind=runs, seed=1))
    print(f"\nDetection quality ({runs} anomalous + {runs} normal runs per kind, 200 samples each, 2% gaps)")
    print(f"{'kind':<11}{'precision':>10}{'recall':>8}{'median delay':>14}   target: P,R >= 0.95, delay <= 2")
    for k in KINDS:
        s = scores[k]
        print(f"{k:<11}{s.precision:>10.3f}{s.recall:>8.3f}{s.median_delay:>11.1f} smp")
    return {k: scores[k].__dict__ for k in KINDS}


def _get(url: str) -> float:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
    return time.perf_counter() - t


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_cost(samples: int) -> dict[str, Any]:
    agent = NodeAgent(NodeAgentConfig(node="bench"), gpu=FakeNvml.with_gpus(8))
    agent.sample()
    cpu = []
    for _ in range(samples):
        t = time.process_time()
        agent.sample()
        cpu.append(time.process_time() - t)
    per_sample = statistics.median(cpu)
    # anchor 1: the bare psutil calls any agent needs (CPU, memory, disk, network, load)
    bare = []
    for _ in range(samples):
        t = time.process_time()
        psutil.cpu_percent(None), psutil.virtual_memory(), psutil.disk_usage("/"), psutil.disk_io_counters()
        psutil.net_io_counters(pernic=True), os.getloadavg()
        bare.append(time.process_time() - t)
    # about 1,000 series: the agent's own plus 60 jobs x 8 ranks x 2 training metrics
    for j in range(60):
        for r in range(8):
            agent.push({"job": f"j{j}", "labels": {"rank": str(r)},
                        "metrics": {"granary_train_step": 1, "granary_train_loss": 2.0}})
    series = len(agent.pushed_samples()) + len(agent.latest)
    render = []
    for _ in range(samples):
        agent._cache = None  # a fresh render each time (the cached answer is cheaper still)
        t = time.perf_counter()
        agent.exposition()
        render.append(time.perf_counter() - t)
    url = agent.serve(port=0)
    http = []
    for _ in range(samples):
        agent._cache = None  # every scrape renders (as when a sample or a push landed since the last one)
        http.append(_get(url + "/metrics"))
    agent.close()
    out: dict[str, Any] = {"sample_cpu_ms": per_sample * 1000, "core_share_at_1s": per_sample / 1.0,
                           "psutil_loop_cpu_ms": statistics.median(bare) * 1000, "series": series,
                           "render_ms": statistics.median(render) * 1000,
                           "scrape_http_ms": statistics.median(http) * 1000}
    ne = shutil.which("prometheus-node-exporter")
    if ne:
        port = _free_port()
        proc = subprocess.Popen([ne, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _get(f"http://127.0.0.1:{port}/metrics")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            p = psutil.Process(proc.pid)
            c0 = sum(p.cpu_times()[:2])
            ne_http = [_get(f"http://127.0.0.1:{port}/metrics") for _ in range(samples)]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                ne_series = sum(1 for ln in r.read().decode().splitlines() if ln and not ln.startswith("#"))
            out.update(node_exporter_scrape_ms=statistics.median(ne_http) * 1000,
                       node_exporter_cpu_ms_per_scrape=(sum(p.cpu_times()[:2]) - c0) / samples * 1000,
                       node_exporter_series=ne_series)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"\nAgent cost (median of {samples}; fake NVML with 8 GPUs, no GPU here)")
    print(f"  one sample: {out['sample_cpu_ms']:.2f} ms CPU -> {out['core_share_at_1s']:.2%} of a core at 1 s "
          f"(target < 1%); bare psutil loop {out['psutil_loop_cpu_ms']:.2f} ms "
          f"(ratio {out['sample_cpu_ms'] / max(out['psutil_loop_cpu_ms'], 1e-6):.1f}x)")
    print(f"  /metrics with {series} series: render {out['render_ms']:.2f} ms, HTTP scrape "
          f"{out['scrape_http_ms']:.2f} ms (target < 10 ms)")
    if "node_exporter_scrape_ms" in out:
        print(f"  node_exporter ({out['node_exporter_series']} series): HTTP scrape "
              f"{out['node_exporter_scrape_ms']:.2f} ms, {out['node_exporter_cpu_ms_per_scrape']:.2f} ms CPU; "
              f"ratio Granary/node_exporter scrape {out['scrape_http_ms'] / out['node_exporter_scrape_ms']:.2f}")
    return out


def energy(jobs: int) -> dict[str, Any]:
    from granary.sched.power import PowerConfig, simulate_energy
    from granary.sched.simulator import SimConfig
    from granary.sched.trace import load_trace

    tr = load_trace(TRACE).slice(0, jobs)
    base, off = PowerConfig(), PowerConfig(power_down_after_s=600.0)
    peak = 80 * (base.base_w + 8 * base.gpu_busy_w)
    ideal = {"cost_model": "ideal"}  # the trace-speed model the published energy figures were measured with
    runs = [("default mlfq/topology, always on", SimConfig(**ideal), base),
            ("pack (binpack) + power-down", SimConfig(placement="binpack", **ideal), off),
            ("topology + power-down", SimConfig(**ideal), off),
            ("spread + power-down", SimConfig(placement="spread", **ideal), off),
            ("power cap 80% of peak", SimConfig(**ideal), PowerConfig(cap_w=0.8 * peak))]
    res = [simulate_energy(tr, c, p, name=n) for n, c, p in runs]
    ref = res[0]
    print(f"\nEnergy-aware scheduling: first {jobs} Philly jobs on 640 GPUs (80 nodes), mlfq")
    print(f"{'run':<36}{'MWh':>8}{'saved':>8}{'peak kW':>9}{'off':>6}{'avg JCT s':>11}{'JCT':>8}")
    out = []
    for r in res:
        saved, djct = 1 - r.energy_kwh / ref.energy_kwh, r.metrics.avg_jct_s / ref.metrics.avg_jct_s - 1
        print(f"{r.name:<36}{r.energy_kwh / 1000:>8.2f}{saved:>+8.1%}{r.peak_kw:>9.0f}{r.off_share:>6.0%}"
              f"{r.metrics.avg_jct_s:>11,.0f}{djct:>+8.1%}")
        out.append(r.to_dict() | {"energy_saved": saved, "avg_jct_change": djct})
    return {"jobs": jobs, "runs": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--samples", type=int, default=30)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}")
    result = {"detection": detection(args.runs), "agent": agent_cost(args.samples), "energy": energy(args.jobs),
              "loadavg": os.getloadavg()}
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    (out / "watch_bench.json").write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
