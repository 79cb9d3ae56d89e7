"""The metrics logger: one JSONL line per logged step in the run folder, and a Prometheus text file.

Prometheus names: ``granary_train_step``, ``granary_train_loss``, ``granary_train_tokens_per_second``,
``granary_train_step_seconds``, ``granary_train_data_seconds``, ``granary_train_mfu``, ``granary_train_grad_norm``,
``granary_train_learning_rate``, ``granary_train_step_skew_seconds``, ``granary_train_restarts_total``,
``granary_train_checkpoint_seconds``. The file (``metrics.prom``) is replaced atomically, for node_exporter's
textfile collector; with ``prometheus_client`` installed and ``GRANARY_TRAIN_METRICS_PORT`` set, rank 0 also
serves them over HTTP.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

GAUGES = {
    "step": "last finished optimiser step",
    "loss": "training loss (mean over ranks)",
    "tokens_per_second": "training tokens per second, all ranks",
    "step_seconds": "wall time of the last step",
    "data_seconds": "time the last step waited for data",
    "mfu": "model FLOPs utilisation (needs a known peak)",
    "grad_norm": "gradient norm before clipping",
    "learning_rate": "learning rate",
    "step_skew_seconds": "slowest minus fastest rank's step time",
    "restarts_total": "restarts of this run (torchrun elastic restarts)",
    "checkpoint_seconds": "wall time of the last checkpoint save",
}


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
        self._gauges = {k: pc.Gauge(f"granary_train_{k}", h, registry=registry) for k, h in GAUGES.items()}
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
            lines += [f"# HELP granary_train_{k} {GAUGES[k]}", f"# TYPE granary_train_{k} gauge",
                      f"granary_train_{k} {float(v)!r}"]
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
