"""Grafana dashboards for Granary, generated from code so their queries stay on the metric-name contract.

Run ``python -m granary.monitor.dashboards deploy/grafana/dashboards`` to regenerate the JSON files; a test
fails when a committed file differs or a panel queries a metric that no Granary process exports.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

_METRIC_RE = re.compile(r"\b(granary_[a-z0-9_]+)\b")


def _panel(pid: int, title: str, exprs: list[tuple[str, str]], *, unit: str = "short", x: int = 0, y: int = 0,
           kind: str = "timeseries") -> dict[str, Any]:
    return {"id": pid, "type": kind, "title": title, "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": legend}
                        for i, (e, legend) in enumerate(exprs)]}


def _dashboard(uid: str, title: str, panels: list[tuple[str, list[tuple[str, str]], str]]) -> dict[str, Any]:
    laid = [_panel(i + 1, t, exprs, unit=unit, x=(i % 2) * 12, y=(i // 2) * 8)
            for i, (t, exprs, unit) in enumerate(panels)]
    return {"uid": uid, "title": title, "tags": ["granary"], "timezone": "utc", "schemaVersion": 39, "version": 1,
            "refresh": "30s", "time": {"from": "now-6h", "to": "now"}, "panels": laid,
            "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                     "label": "Data source"}]}}


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON model."""
    return {
        "granary-cluster.json": _dashboard("granary-cluster", "Granary / Cluster", [
            ("Nodes by status", [("granary_sched_nodes", "{{status}}")], "short"),
            ("GPUs in use", [("granary_sched_gpus_used", "used"), ("granary_sched_gpus", "total")], "short"),
            ("GPU utilisation by node", [("avg by (node) (granary_gpu_utilization_ratio)", "{{node}}")],
             "percentunit"),
            ("CPU utilisation by node", [("granary_node_cpu_utilization_ratio", "{{node}}")], "percentunit"),
            ("Memory used", [("granary_node_memory_used_bytes / granary_node_memory_total_bytes", "{{node}}")],
             "percentunit"),
            ("Filesystem fill", [("granary_node_filesystem_used_bytes / granary_node_filesystem_size_bytes",
                                  "{{node}} {{mount}}")], "percentunit"),
            ("GPU temperature", [("granary_gpu_temperature_celsius", "{{node}}/{{gpu}}")], "celsius"),
            ("GPU errors (5 m)", [("increase(granary_gpu_xid_errors_total[5m])", "xid {{node}}/{{gpu}}"),
                                  ("increase(granary_gpu_ecc_uncorrected_errors_total[5m])",
                                   "ecc {{node}}/{{gpu}}")], "short"),
            ("Pressure stall", [("granary_node_pressure_ratio", "{{node}} {{resource}}")], "percentunit"),
            ("Network", [("rate(granary_node_network_received_bytes_total[1m])", "rx {{node}} {{interface}}"),
                         ("rate(granary_node_network_sent_bytes_total[1m])", "tx {{node}} {{interface}}")], "Bps"),
        ]),
        "granary-jobs.json": _dashboard("granary-jobs", "Granary / Jobs", [
            ("Jobs by state", [("granary_sched_jobs", "{{state}}")], "short"),
            ("Watcher requests", [("granary_sched_requests", "{{kind}} {{state}}")], "short"),
            ("Oldest heartbeat", [("granary_sched_node_heartbeat_age_seconds", "age")], "s"),
            ("Agent pushes", [("rate(granary_node_pushes_total[1m])", "{{node}}"),
                              ("rate(granary_node_push_rejected_total[1m])", "refused {{reason}}")], "ops"),
        ]),
        "granary-training.json": _dashboard("granary-training", "Granary / Training", [
            ("Steps per second", [("rate(granary_train_step[1m])", "{{job}} rank {{rank}}")], "short"),
            ("Loss", [("granary_train_loss", "{{job}} rank {{rank}}")], "short"),
            ("Gradient norm", [("granary_train_grad_norm", "{{job}} rank {{rank}}")], "short"),
            ("Step time by rank", [("granary_train_step_seconds", "{{job}} rank {{rank}}")], "s"),
            ("Data wait share", [("granary_train_data_wait_seconds / granary_train_step_seconds",
                                  "{{job}} rank {{rank}}")], "percentunit"),
            ("Tokens per second", [("sum by (job) (rate(granary_train_tokens_total[1m]))", "{{job}}")], "short"),
        ]),
        "granary-gateway.json": _dashboard("granary-gateway", "Granary / Gateway", [
            ("Requests by code", [("sum by (code) (rate(granary_gateway_requests_total[1m]))", "{{code}}")],
             "reqps"),
            ("p99 latency", [("histogram_quantile(0.99, sum by (route, le) "
                              "(rate(granary_gateway_request_duration_seconds_bucket[5m])))", "{{route}}")], "s"),
            ("Time to first token p50", [("histogram_quantile(0.5, sum by (route, le) "
                                          "(rate(granary_gateway_time_to_first_token_seconds_bucket[5m])))",
                                          "{{route}}")], "s"),
            ("Queue depth", [("granary_gateway_queue_depth", "{{route}}")], "short"),
            ("Healthy backends", [("sum by (route) (granary_gateway_backend_healthy)", "{{route}}")], "short"),
            ("Refused", [("sum by (reason) (rate(granary_gateway_rejected_total[5m]))", "{{reason}}")], "reqps"),
        ]),
        "granary-curation.json": _dashboard("granary-curation", "Granary / Curation", [
            ("Documents per second", [("sum by (step) (rate(granary_curate_documents_total[1m]))", "{{step}}")],
             "short"),
            ("Dropped per second", [("sum by (step) (rate(granary_curate_dropped_total[1m]))", "{{step}}")],
             "short"),
            ("Time per step", [("sum by (step) (rate(granary_curate_step_seconds_total[1m]))", "{{step}}")],
             "percentunit"),
        ]),
        "granary-energy.json": _dashboard("granary-energy", "Granary / Energy", [
            ("Cluster power", [("sum by (source) (granary_energy_node_power_watts)", "{{source}}")], "watt"),
            ("Power by node", [("sum by (node) (granary_energy_node_power_watts)", "{{node}}")], "watt"),
            ("GPU power vs limit", [("granary_gpu_power_watts", "{{node}}/{{gpu}}"),
                                    ("granary_gpu_power_limit_watts", "limit {{node}}/{{gpu}}")], "watt"),
            ("Energy by tenant (1 d)", [("increase(granary_energy_tenant_joules_total[1d]) / 3.6e6",
                                         "{{tenant}}")], "kwatth"),
        ]),
    }


def queried_metrics(model: dict[str, Any]) -> set[str]:
    """Metric names that the panels of a dashboard query."""
    return {m for p in model["panels"] for t in p["targets"] for m in _METRIC_RE.findall(t["expr"])}


def write(out_dir: Path) -> list[Path]:
    """Write every dashboard as pretty JSON into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in dashboards().items():
        path = out_dir / name
        path.write_text(json.dumps(model, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":  # pragma: no cover
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/grafana/dashboards")):
        sys.stdout.write(f"{p}\n")
