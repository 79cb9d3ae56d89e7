"""The monitor's node agent: samples the host and GPUs, takes pushes from jobs, serves /metrics, stores series."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from granary.monitor.gpu import GpuBackend, GpuReading
from granary.monitor.host import HostSampler, Sample
from granary.monitor.metrics import check_sample, render_samples
from granary.monitor.power import PowerModel, RaplReader
from granary.monitor.series import SeriesStore

log = logging.getLogger(__name__)

MAX_PUSH_BYTES = 1 << 20


@dataclass(kw_only=True, frozen=True)
class NodeAgentConfig:
    """Knobs of the node agent.

    Attributes:
        node: node name (a label on everything stored).
        interval_s: seconds between samples.
        store_every_s: seconds between writes to the series store (0: every sample).
        push_max_series: pushed series kept at most (more are refused with reason ``too_many_series``).
        push_ttl_s: a pushed series not updated for this long is dropped (its job ended).
        power: the model used where no energy counter is readable.
    """

    node: str
    interval_s: float = 1.0
    store_every_s: float = 5.0
    push_max_series: int = 5000
    push_ttl_s: float = 300.0
    power: PowerModel = field(default_factory=PowerModel)

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.store_every_s < 0 or self.push_ttl_s <= 0 or self.push_max_series < 1:
            raise ValueError("interval_s and push_ttl_s must be > 0, store_every_s >= 0, push_max_series >= 1")


def gpu_samples(readings: list[GpuReading]) -> list[Sample]:
    """The ``granary_gpu_*`` samples of GPU readings (missing fields are left out, not zeroed)."""
    out: list[Sample] = [("granary_node_gpus", (), float(len(readings)))]
    pairs = (("granary_gpu_utilization_ratio", "utilization"), ("granary_gpu_memory_used_bytes", "memory_used_bytes"),
             ("granary_gpu_memory_total_bytes", "memory_total_bytes"), ("granary_gpu_power_watts", "power_w"),
             ("granary_gpu_power_limit_watts", "power_limit_w"), ("granary_gpu_energy_joules_total", "energy_j"),
             ("granary_gpu_temperature_celsius", "temperature_c"), ("granary_gpu_sm_clock_hertz", "sm_clock_hz"),
             ("granary_gpu_throttle_reasons", "throttle_reasons"),
             ("granary_gpu_ecc_corrected_errors_total", "ecc_corrected"),
             ("granary_gpu_ecc_uncorrected_errors_total", "ecc_uncorrected"),
             ("granary_gpu_xid_errors_total", "xid_errors"))
    for g in readings:
        lab = (("gpu", str(g.index)),)
        out.append(("granary_gpu_up", lab, 1.0 if g.up else 0.0))
        for name, attr in pairs:
            v = getattr(g, attr)
            if v is not None:
                out.append((name, lab, float(v)))
    return out


class EnergyMeter:
    """Integrates node energy by source: NVML's counter for GPUs, RAPL for CPUs, else the power model."""

    def __init__(self, model: PowerModel, rapl: RaplReader | None = None) -> None:
        self.model = model
        self.rapl = rapl if rapl is not None else RaplReader()
        self.joules: dict[str, float] = {}
        self.watts: dict[str, float] = {}
        self._gpu_last: dict[int, float] = {}
        self._last_t: float | None = None

    def update(self, now: float, cpu_utilization: float, gpus: list[GpuReading]) -> list[Sample]:
        """Account energy up to ``now``; returns the ``granary_energy_node_*`` samples."""
        dt = 0.0 if self._last_t is None else max(0.0, now - self._last_t)
        self._last_t = now
        rapl_j = self.rapl.read_j()
        if rapl_j is not None:
            prev = self.joules.get("rapl", 0.0)
            self.watts["rapl"] = (rapl_j - prev) / dt if dt > 0 else 0.0
            self.joules["rapl"] = rapl_j
        else:
            w = self.model.cpu_w(cpu_utilization)
            self.watts["model"] = w
            self.joules["model"] = self.joules.get("model", 0.0) + w * dt
        nvml_w = 0.0
        for g in gpus:
            if not g.up:
                continue
            if g.energy_j is not None:
                last = self._gpu_last.get(g.index)
                if last is not None and g.energy_j >= last:
                    self.joules["nvml"] = self.joules.get("nvml", 0.0) + (g.energy_j - last)
                self._gpu_last[g.index] = g.energy_j
                self.joules.setdefault("nvml", 0.0)
            elif g.power_w is not None or g.utilization is not None:  # no counter: integrate power or the model
                w = g.power_w if g.power_w is not None else self.model.gpu_w(g.utilization or 0.0)
                self.joules["nvml"] = self.joules.get("nvml", 0.0) + w * dt
            nvml_w += g.power_w if g.power_w is not None else self.model.gpu_w(g.utilization or 0.0)
        if gpus:
            self.watts["nvml"] = nvml_w
        out: list[Sample] = []
        for source in sorted(self.joules):
            lab = (("source", source),)
            out.append(("granary_energy_node_power_watts", lab, self.watts.get(source, 0.0)))
            out.append(("granary_energy_node_joules_total", lab, self.joules[source]))
        return out

    @property
    def total_w(self) -> float:
        """Current node power over every source."""
        return sum(self.watts.values())


class NodeAgent:
    """Samples this node every ``interval_s``, keeps the latest readings and pushed job metrics, serves them.

    Args:
        config: the knobs.
        gpu: the GPU source (None: no GPU; the agent says so in ``gpu_status``).
        gpu_status: a line saying what the GPU source is.
        series: where samples are stored for the detectors (None: not stored).
        clock: wall-clock time source.
    """

    def __init__(self, config: NodeAgentConfig, *, gpu: GpuBackend | None = None, gpu_status: str = "",
                 series: SeriesStore | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.gpu = gpu
        self.gpu_status = gpu_status or ("no GPU source" if gpu is None else "GPU source attached")
        self.series = series
        self.clock = clock
        self.host = HostSampler()
        self.energy = EnergyMeter(config.power)
        self.latest: list[Sample] = []
        self.gpus: list[GpuReading] = []
        self.pushed: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, float]] = {}
        self.counters: dict[str, float] = {"samples": 0.0, "pushes": 0.0}
        self.errors: dict[str, float] = {}
        self.rejected: dict[str, float] = {}
        self._lock = threading.Lock()
        self._cache: bytes | None = None
        self._last_store = -math.inf
        self.server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ sampling
    def sample(self) -> list[Sample]:
        """Take one sample of the host, the GPUs and energy; store it when due; return it."""
        started = time.perf_counter()
        now = self.clock()
        out: list[Sample] = []
        try:
            out += self.host.sample()
        except OSError as exc:
            log.warning("host reading failed: %s", exc)
            self.errors["host"] = self.errors.get("host", 0.0) + 1
        gpus: list[GpuReading] = []
        if self.gpu is not None:
            try:
                gpus = self.gpu.read()
            except Exception as exc:  # a broken driver must not stop the CPU-side readings
                log.warning("GPU reading failed: %s", exc)
                self.errors["gpu"] = self.errors.get("gpu", 0.0) + 1
                gpus = self.gpus
        out += gpu_samples(gpus)
        out += self.energy.update(now, self.host.cpu_utilization, gpus)
        self.counters["samples"] += 1
        out.append(("granary_node_sample_duration_seconds", (), time.perf_counter() - started))
        with self._lock:
            self.latest, self.gpus, self._cache = out, gpus, None
            self._expire(now)
        if self.series is not None and now - self._last_store >= self.config.store_every_s:
            self._last_store = now
            self.series.write(out + self.pushed_samples(), ts=now, extra={"node": self.config.node})
        return out

    def _expire(self, now: float) -> None:
        ttl = self.config.push_ttl_s
        for key in [k for k, (_, at) in self.pushed.items() if now - at > ttl]:
            del self.pushed[key]

    def pushed_samples(self) -> list[Sample]:
        """The metrics jobs pushed, as samples."""
        with self._lock:
            return [(name, labels, value) for (name, labels), (value, _) in self.pushed.items()]

    def own_samples(self) -> list[Sample]:
        """The agent's counters about itself."""
        out: list[Sample] = [("granary_node_samples_total", (), self.counters["samples"]),
                             ("granary_node_pushes_total", (), self.counters["pushes"])]
        out += [("granary_node_sample_errors_total", (("source", k),), v) for k, v in sorted(self.errors.items())]
        out += [("granary_node_push_rejected_total", (("reason", k),), v) for k, v in sorted(self.rejected.items())]
        return out

    # --------------------------------------------------------------------- push
    def push(self, payload: Any) -> dict[str, Any]:
        """Accept metrics from a job: ``{"job": id, "labels": {...}, "metrics": {name: value}}``.

        Returns ``{"accepted": n, "rejected": {name: reason}}``; a malformed payload is refused whole.

        Raises:
            ValueError: the payload is not an object with a ``metrics`` object.
        """
        if not isinstance(payload, dict) or not isinstance(payload.get("metrics"), dict):
            self._reject("bad_payload")
            raise ValueError('push payload must be a JSON object with a "metrics" object, e.g. '
                             '{"job": "j1", "labels": {"rank": "0"}, "metrics": {"granary_train_step": 10}}')
        labels = dict(payload.get("labels") or {})
        if payload.get("job") is not None:
            labels["job"] = str(payload["job"])
        now = self.clock()
        accepted, rejected = 0, {}
        with self._lock:
            for name, value in payload["metrics"].items():
                reason = check_sample(name, labels, value)
                key = (name, tuple(sorted(labels.items())))
                if reason is None and key not in self.pushed and len(self.pushed) >= self.config.push_max_series:
                    reason = "too_many_series"
                if reason is not None:
                    rejected[name] = reason
                    self.rejected[reason] = self.rejected.get(reason, 0.0) + 1
                    continue
                self.pushed[key] = (float(value), now)
                accepted += 1
            self.counters["pushes"] += 1
            self._cache = None
        return {"accepted": accepted, "rejected": rejected}

    def _reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0.0) + 1

    # ------------------------------------------------------------------ serving
    def exposition(self) -> bytes:
        """The text exposition (cached until the next sample or push)."""
        with self._lock:
            cached = self._cache
        if cached is not None:
            return cached
        body = render_samples(self.latest + self.pushed_samples() + self.own_samples(),
                              extra={"node": self.config.node})
        with self._lock:
            self._cache = body
        return body

    def serve(self, host: str = "127.0.0.1", port: int = 9464) -> str:
        """Serve ``/metrics``, ``/push`` and ``/healthz`` on a background thread; returns the base URL."""
        agent = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    self._send(200, agent.exposition(), "text/plain; version=0.0.4; charset=utf-8")
                elif self.path == "/healthz":
                    self._send(200, json.dumps({"node": agent.config.node, "gpu": agent.gpu_status}).encode(),
                               "application/json")
                else:
                    self._send(404, b'{"error": "not found; try /metrics, /push or /healthz"}', "application/json")

            def do_POST(self) -> None:
                if self.path != "/push":
                    self._send(404, b'{"error": "not found"}', "application/json")
                    return
                try:
                    size = int(self.headers.get("Content-Length") or "0")
                except ValueError:
                    size = -1
                if not 0 < size <= MAX_PUSH_BYTES:
                    agent._reject("body_size")
                    self._send(413, json.dumps({"error": f"body must be 1..{MAX_PUSH_BYTES} bytes with a "
                                                         "Content-Length"}).encode(), "application/json")
                    self.close_connection = True
                    return
                try:
                    result = agent.push(json.loads(self.rfile.read(size)))
                except ValueError as exc:
                    self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
                    return
                self._send(200, json.dumps(result).encode(), "application/json")

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True, name="monitor-http").start()
        h, p = self.server.server_address[:2]
        return f"http://{h.decode() if isinstance(h, bytes) else h}:{p}"

    def run(self, stop: threading.Event) -> None:
        """Sample every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            started = time.monotonic()
            self.sample()
            stop.wait(max(0.0, self.config.interval_s - (time.monotonic() - started)))

    def close(self) -> None:
        """Stop serving and release the GPU library."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.gpu is not None:
            self.gpu.close()
