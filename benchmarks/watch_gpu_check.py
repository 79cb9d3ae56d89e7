"""Check the agent's NVML readings against nvidia-smi while a GPU load runs (needs an NVIDIA GPU).

    .venv/bin/python benchmarks/watch_gpu_check.py [--seconds 20]

Runs a matrix-multiply load with PyTorch on GPU 0 (CUDA build needed), reads GPU 0 through the agent's
NvmlBackend and through `nvidia-smi --query-gpu` every second, prints both side by side and the largest
differences, and exits non-zero when a reading differs beyond its tolerance (utilisation 15 points, memory
5%, power 15% or 30 W, temperature 3 C, SM clock 10%) or the energy counter does not track integrated power
within 15%. On a machine without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time

FIELDS = "utilization.gpu,memory.used,power.draw,temperature.gpu,clocks.sm"


def smi() -> list[float]:
    out = subprocess.run(["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [float(x) for x in out.strip().split(",")]


def load(stop: threading.Event) -> None:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    while not stop.is_set():
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    from granary.errors import GranaryError
    from granary.monitor.gpu import NvmlBackend

    if shutil.which("nvidia-smi") is None:
        print("no nvidia-smi on this machine: nothing to check (the agent reports no GPU here)")
        return 0
    try:
        nv = NvmlBackend()
    except GranaryError as exc:
        print(f"NVML unavailable: {exc}")
        return 0
    stop = threading.Event()
    worker = threading.Thread(target=load, args=(stop,), daemon=True)
    worker.start()
    time.sleep(3)  # let clocks and power settle
    rows, bad = [], []
    e0, t0 = nv.read()[0].energy_j, time.monotonic()
    power_integral, last, e_end = 0.0, t0, e0
    for _ in range(args.seconds):
        g = nv.read()[0]
        s = smi()
        now = time.monotonic()
        power_integral += (g.power_w or 0.0) * (now - last)
        last, e_end = now, g.energy_j
        mine = [100 * (g.utilization or 0), (g.memory_used_bytes or 0) / 2**20, g.power_w or 0,
                g.temperature_c or 0, (g.sm_clock_hz or 0) / 1e6]
        rows.append((mine, s))
        print("agent " + " ".join(f"{v:9.1f}" for v in mine) + " | nvidia-smi " + " ".join(f"{v:9.1f}" for v in s))
        time.sleep(1)
    stop.set()
    worker.join(60)
    energy = (e_end or 0.0) - (e0 or 0.0)
    tolerances = [lambda a, b: abs(a - b) <= 15, lambda a, b: abs(a - b) <= 0.05 * max(b, 1),
                  lambda a, b: abs(a - b) <= max(30, 0.15 * b), lambda a, b: abs(a - b) <= 3,
                  lambda a, b: abs(a - b) <= 0.10 * max(b, 1)]
    names = FIELDS.split(",")
    for i, ok in enumerate(tolerances):
        worst = max(abs(m[i] - s[i]) for m, s in rows)
        good = sum(ok(m[i], s[i]) for m, s in rows)
        print(f"{names[i]:<16} max difference {worst:8.1f}; within tolerance {good}/{len(rows)}")
        if good < 0.9 * len(rows):
            bad.append(names[i])
    print(f"energy counter {energy:.0f} J vs integrated power {power_integral:.0f} J")
    if e0 is not None and abs(energy - power_integral) > 0.15 * max(power_integral, 1):
        bad.append("energy")
    nv.close()
    print("FAIL: " + ", ".join(bad) if bad else "OK: the agent agrees with nvidia-smi")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
