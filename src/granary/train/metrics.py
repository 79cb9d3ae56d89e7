"""The metrics logger: one JSONL line per logged step in the run folder, a Prometheus text file, and pushes to the
node's monitor agent.

Exported names are the monitor's contract for ``granary_train_*`` (:data:`EXPORTED`; a test keeps it equal to
``granary.monitor.names.TRAIN``): ``granary_train_step``, ``_loss``, ``_grad_norm``, ``_learning_rate``,
``_tokens_per_second``, ``_step_seconds``, ``_data_wait_seconds``, ``_step_skew_seconds``, ``_mfu``,
``_checkpoint_seconds`` (gauges), ``_tokens_total`` and ``_restarts_total`` (counters). The file (``metrics.prom``)
is replaced atomically, for node_exporter's textfile collector; with ``prometheus_client`` installed and
``GRANARY_TRAIN_METRICS_PORT`` set, rank 0 also serves them over HTTP. With ``GRANARY_MONITOR_URL`` set (the
scheduler sets it for the jobs it launches), every rank pushes its own values to that agent (:class:`MonitorPush`),
labelled ``rank`` and ``job``, which is what the monitor's stall, straggler and spike detectors read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

# key of a logged record -> (exported name, kind, help)
EXPORTED: dict[str, tuple[str, Literal["gauge", "counter"], str]] = {
    "step": ("granary_train_step", "gauge", "Last completed optimizer step"),
    "loss": ("granary_train_loss", "gauge", "Loss of the last step"),
    "grad_norm": ("granary_train_grad_norm", "gauge", "Gradient norm of the last step"),
    "learning_rate": ("granary_train_learning_rate", "gauge", "Learning rate of the last step"),
    "tokens_per_second": ("granary_train_tokens_per_second", "gauge", "Training tokens per second, all ranks"),
    "step_seconds": ("granary_train_step_seconds", "gauge", "Wall time of the last step"),
    "data_seconds": ("granary_train_data_wait_seconds", "gauge", "Time the last step waited for data"),
    "step_skew_seconds": ("granary_train_step_skew_seconds", "gauge", "Slowest minus fastest rank's step time"),
    "mfu": ("granary_train_mfu", "gauge", "Model FLOPs utilisation of the last step"),
    "checkpoint_seconds": ("granary_train_checkpoint_seconds", "gauge", "Wall time of the last checkpoint save"),
    "tokens_total": ("granary_train_tokens_total", "counter", "Tokens trained on"),
    "restarts_total": ("granary_train_restarts_total", "counter", "Restarts of the run"),
}
GAUGES = {k: h for k, (_n, _kind, h) in EXPORTED.items()}  # the keys the logger exports, with their help
PUSHED_PER_RANK = ("step", "loss", "grad_norm", "step_seconds", "data_seconds", "tokens_total")


class MetricsLogger:
    """Write metrics of rank 0 (other ranks construct it with ``enabled=False``)."""

    def __init__(self, run_dir: Path, *, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.values: dict[str, float] = {}
        self._gauges: dict[str, Any] = {}
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
            self._serve()

    def _serve(self) -> None:
        port = os.environ.get("GRANARY_TRAIN_METRICS_PORT")
        if not port:
            return
        try:
            import prometheus_client as pc
        except ImportError:
            return
        registry = pc.CollectorRegistry()
        # counters are exported as gauges set to the run's total (prometheus_client's Counter cannot be set);
        # the text file below declares their real type
        self._gauges = {k: pc.Gauge(name, h, registry=registry) for k, (name, _kind, h) in EXPORTED.items()}
        pc.start_http_server(int(port), registry=registry)

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` (step, loss, ...) and refresh the gauges."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self.set(**{k: v for k, v in record.items() if k in GAUGES and isinstance(v, (int, float))})

    def set(self, **values: float) -> None:
        if not self.enabled:
            return
        self.values.update(values)
        for k, v in values.items():
            if k in self._gauges:
                self._gauges[k].set(v)
        lines = []
        for k, v in self.values.items():
            name, kind, help_ = EXPORTED[k]
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {float(v)!r}"]
        tmp = self.run_dir / "metrics.prom.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.run_dir / "metrics.prom")

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every logged record of a run (restarted attempts repeat the steps after their checkpoint)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MonitorPush:
    """Push this rank's values to the node's monitor agent (``granary.monitor.push``) from a background thread.

    A step only hands its values over (the newest replaces one not sent yet), so a slow or absent agent never
    delays training; a failed push is logged by ``push`` and the next one carries the newer values.

    Args:
        rank: this process's rank (the ``rank`` label).
        job: the ``job`` label (default ``GRANARY_JOB_ID``, set by the scheduler).
        url: the agent (default ``GRANARY_MONITOR_URL``; unset: pushing is off).
    """

    def __init__(self, *, rank: int, job: str | None = None, url: str | None = None) -> None:
        self.url = url or os.environ.get("GRANARY_MONITOR_URL") or None
        self.rank = rank
        self.job = job or os.environ.get("GRANARY_JOB_ID") or None
        self.sent = 0
        self._pending: dict[str, float] | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        if self.url:
            self._thread = threading.Thread(target=self._run, name="granary-train-push", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    def offer(self, record: dict[str, Any]) -> None:
        """Queue the contract values of ``record`` (keys of :data:`PUSHED_PER_RANK`) for the next push."""
        if not self.enabled:
            return
        values = {EXPORTED[k][0]: float(record[k]) for k in PUSHED_PER_RANK
                  if isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)}
        with self._cond:
            self._pending = values
            self._cond.notify()

    def _run(self) -> None:
        from granary.monitor.push import push  # stdlib only: a sibling subsystem's client, not its agent

        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                values, self._pending = self._pending, None
                closed = self._closed
            if values and push(values, labels={"rank": str(self.rank)}, job=self.job, url=self.url):
                self.sent += 1
            if closed:
                return

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is pending, then stop."""
        if self._thread is None:
            return
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the last metrics push to %s did not finish within %.0f s", self.url, timeout_s)
        self._thread = None
