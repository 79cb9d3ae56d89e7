#!/usr/bin/env bash
# Loader scaling on a many-core (GPU) machine: Granary's first pass at num_threads 0..N against the
# single-threaded numpy gather and the parallel index_select anchor (all cores), in one run.
#
#   OUT=dir benchmarks/gpu/stream.sh            # full size: 262,144 x 2,048 tokens (1 GiB), 3 paired rounds
#   SMOKE=1 OUT=dir benchmarks/gpu/stream.sh    # 8,192 samples, 1 round (checks the script in ~1 minute)
#
# PYTHON (default .venv/bin/python) must have granary installed with the torch extra. Results: $OUT/stream_bench.json
# (every round, ratios, load average, core count) and $OUT/summary.txt. Targets (issue 17): throughput rises with
# threads, best >= 4x the numpy gather (>= 30 GB/s) and >= 0.5x the parallel anchor.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
cores=$(nproc)
threads=1
for n in 2 4 8 16 32 64; do [ "$n" -le "$cores" ] && threads="$threads,$n"; done
if [ "${SMOKE:-0}" = "1" ]; then
  size=(--samples 8192 --rounds 1)
else
  size=(--rounds "${ROUNDS:-3}")
fi
{ echo "host: $(hostname) cores: $cores"; uptime; nvidia-smi -L 2>/dev/null || true; } > "$OUT/summary.txt"
"$PYTHON" benchmarks/stream_bench.py --no-anchors --threads "$threads" --out "$OUT" "${size[@]}" > "$OUT/stream_bench.log" 2>&1 \
  || { tail -50 "$OUT/stream_bench.log"; exit 1; }
result=$(find "$OUT" -name stream_bench.json -newer "$OUT/summary.txt" | head -1)
"$PYTHON" - "$result" >> "$OUT/summary.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["paired"]
gb = p["median_gb_per_s"]
print(f"load average before {r['load_average_before']}, after {r['load_average_after']}")
for k in sorted(gb, key=lambda k: (not k.startswith("granary_t"), k)):
    print(f"{k:24s} {gb[k]:7.2f} GB/s  {p['median_samples_per_s'][k]:14,.0f} samples/s")
for k, v in p["median_ratios"].items():
    print(f"{k:24s} {v:7.3f}")
PY
cat "$OUT/summary.txt"
