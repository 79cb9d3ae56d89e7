"""The metric-name contract: every metric a Granary process exports, its type, labels and owning subsystem.

Prefixes are owned by one subsystem each: ``granary_sched_*``, ``granary_curate_*``, ``granary_node_*``,
``granary_gpu_*`` and ``granary_energy_*`` by the monitor; ``granary_gateway_*`` by the gateway
(:mod:`granary.serve.metrics`); ``granary_train_*`` by the training runtime; ``granary_server_*`` by the HTTP
server. Labels come from fixed sets (state, status, mount, interface, gpu index, rank, reason), never free text,
so no metric has an unbounded label set. Dashboards and alert rules are checked against this table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

OWNERS = {
    "granary_sched_": "monitor", "granary_curate_": "monitor", "granary_node_": "monitor",
    "granary_gpu_": "monitor", "granary_energy_": "monitor", "granary_gateway_": "serve",
    "granary_train_": "train", "granary_server_": "server",
}
_NAME_RE = re.compile(r"^granary_[a-z][a-z0-9_]*$")
_SUFFIX_BY_KIND = {"counter": "_total"}


@dataclass(frozen=True)
class MetricDef:
    """One metric of the contract.

    Attributes:
        name: the Prometheus name (counters end in ``_total``; units are in the name).
        kind: counter, gauge or histogram.
        help: one line for ``# HELP``.
        labels: label names (each from a bounded set).
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    @property
    def owner(self) -> str:
        """The subsystem that exports it."""
        return owner_of(self.name)


def owner_of(name: str) -> str:
    """The subsystem owning a metric name by its prefix.

    Raises:
        ValueError: the name breaks the naming rules or has no owner.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"metric name {name!r} must match {_NAME_RE.pattern}")
    for prefix, owner in OWNERS.items():
        if name.startswith(prefix):
            return owner
    raise ValueError(f"metric name {name!r} has no owning subsystem; prefixes: {', '.join(OWNERS)}")


def _m(name: str, kind: Kind, help_: str, *labels: str) -> MetricDef:
    return MetricDef(name, kind, help_, labels)


NODE = (
    _m("granary_node_cpu_utilization_ratio", "gauge", "CPU busy time over the last sample interval (0-1)"),
    _m("granary_node_cpu_count", "gauge", "Logical CPUs"),
    _m("granary_node_load1", "gauge", "One-minute load average"),
    _m("granary_node_memory_total_bytes", "gauge", "Physical memory"),
    _m("granary_node_memory_used_bytes", "gauge", "Memory in use (total - available)"),
    _m("granary_node_filesystem_size_bytes", "gauge", "Size of a mounted filesystem", "mount"),
    _m("granary_node_filesystem_used_bytes", "gauge", "Used space of a mounted filesystem", "mount"),
    _m("granary_node_disk_read_bytes_total", "counter", "Bytes read from block devices"),
    _m("granary_node_disk_written_bytes_total", "counter", "Bytes written to block devices"),
    _m("granary_node_network_received_bytes_total", "counter", "Bytes received", "interface"),
    _m("granary_node_network_sent_bytes_total", "counter", "Bytes sent", "interface"),
    _m("granary_node_pressure_ratio", "gauge", "Pressure stall information: share of time some tasks stalled "
       "(avg10, 0-1)", "resource"),
    _m("granary_node_gpus", "gauge", "GPUs the agent sees (0 when there is no GPU or no NVML)"),
    _m("granary_node_sample_duration_seconds", "gauge", "Time the agent's last sample took"),
    _m("granary_node_samples_total", "counter", "Samples the agent took"),
    _m("granary_node_sample_errors_total", "counter", "Readings that failed, by source", "source"),
    _m("granary_node_pushes_total", "counter", "Metric pushes accepted from jobs on this node"),
    _m("granary_node_push_rejected_total", "counter", "Metric pushes refused, by reason", "reason"),
)

GPU = (
    _m("granary_gpu_up", "gauge", "1 while the GPU answers NVML, 0 once it fell off the bus", "gpu"),
    _m("granary_gpu_utilization_ratio", "gauge", "Share of time a kernel ran (0-1)", "gpu"),
    _m("granary_gpu_memory_used_bytes", "gauge", "Device memory in use", "gpu"),
    _m("granary_gpu_memory_total_bytes", "gauge", "Device memory", "gpu"),
    _m("granary_gpu_power_watts", "gauge", "Power draw", "gpu"),
    _m("granary_gpu_power_limit_watts", "gauge", "Enforced power limit", "gpu"),
    _m("granary_gpu_energy_joules_total", "counter", "Energy since the driver loaded (NVML counter)", "gpu"),
    _m("granary_gpu_temperature_celsius", "gauge", "Core temperature", "gpu"),
    _m("granary_gpu_sm_clock_hertz", "gauge", "SM clock", "gpu"),
    _m("granary_gpu_throttle_reasons", "gauge", "Bit mask of active clock throttle reasons (NVML)", "gpu"),
    _m("granary_gpu_ecc_corrected_errors_total", "counter", "Corrected ECC errors (volatile)", "gpu"),
    _m("granary_gpu_ecc_uncorrected_errors_total", "counter", "Uncorrected ECC errors (volatile)", "gpu"),
    _m("granary_gpu_xid_errors_total", "counter", "XID errors reported by the driver", "gpu"),
)

ENERGY = (
    _m("granary_energy_node_power_watts", "gauge", "Node power by source (nvml, rapl, model)", "source"),
    _m("granary_energy_node_joules_total", "counter", "Node energy since the agent started, by source", "source"),
    _m("granary_energy_tenant_joules_total", "counter", "Energy of finished jobs by tenant (IT energy, no PUE)",
       "tenant"),
)

SCHED = (
    _m("granary_sched_jobs", "gauge", "Jobs by state", "state"),
    _m("granary_sched_nodes", "gauge", "Nodes by status", "status"),
    _m("granary_sched_gpus", "gauge", "GPUs of nodes that are up or draining"),
    _m("granary_sched_gpus_used", "gauge", "GPUs held by open attempts"),
    _m("granary_sched_requests", "gauge", "Watcher requests by kind and state", "kind", "state"),
    _m("granary_sched_node_heartbeat_age_seconds", "gauge", "Age of the oldest heartbeat of a node that is up"),
)

CURATE = (
    _m("granary_curate_documents_total", "counter", "Documents read by a curation run, by step", "step"),
    _m("granary_curate_dropped_total", "counter", "Documents dropped by a curation run, by step", "step"),
    _m("granary_curate_step_seconds_total", "counter", "Time spent in a curation step", "step"),
)

# What the monitor reads from other owners (their modules define them; tests keep the lists in step).
GATEWAY = (
    _m("granary_gateway_requests_total", "counter", "Requests answered", "route", "backend", "code"),
    _m("granary_gateway_request_duration_seconds", "histogram", "Request duration", "route", "backend"),
    _m("granary_gateway_time_to_first_token_seconds", "histogram", "Time to first token", "route", "backend"),
    _m("granary_gateway_inter_token_latency_seconds", "histogram", "Inter-token latency", "route", "backend"),
    _m("granary_gateway_in_flight_requests", "gauge", "Requests being proxied", "route", "backend"),
    _m("granary_gateway_queue_depth", "gauge", "Requests waiting", "route"),
    _m("granary_gateway_backend_healthy", "gauge", "Backend takes traffic", "route", "backend"),
    _m("granary_gateway_backend_ejections_total", "counter", "Outlier ejections", "route", "backend"),
    _m("granary_gateway_retries_total", "counter", "Retries", "route", "backend"),
    _m("granary_gateway_rejected_total", "counter", "Refused requests", "route", "reason"),
)

TRAIN = (  # pushed by training ranks to their node agent (see docs/watch.md "Pushing from a job"); the rest are
    # rank 0's run-wide figures in its metrics.prom (granary.train.metrics.EXPORTED; a test keeps the two equal)
    _m("granary_train_step", "gauge", "Last completed optimizer step", "rank"),
    _m("granary_train_loss", "gauge", "Loss of the last step", "rank"),
    _m("granary_train_grad_norm", "gauge", "Gradient norm of the last step", "rank"),
    _m("granary_train_step_seconds", "gauge", "Wall time of the last step", "rank"),
    _m("granary_train_data_wait_seconds", "gauge", "Time the last step waited for data", "rank"),
    _m("granary_train_tokens_total", "counter", "Tokens trained on", "rank"),
    _m("granary_train_learning_rate", "gauge", "Learning rate of the last step", "rank"),
    _m("granary_train_tokens_per_second", "gauge", "Training tokens per second, all ranks", "rank"),
    _m("granary_train_step_skew_seconds", "gauge", "Slowest minus fastest rank's step time", "rank"),
    _m("granary_train_mfu", "gauge", "Model FLOPs utilisation of the last step", "rank"),
    _m("granary_train_checkpoint_seconds", "gauge", "Wall time of the last checkpoint save", "rank"),
    _m("granary_train_restarts_total", "counter", "Restarts of the run", "rank"),
)

MONITOR = NODE + GPU + ENERGY + SCHED + CURATE
CONTRACT: dict[str, MetricDef] = {m.name: m for m in MONITOR + GATEWAY + TRAIN}


def series_names(metric: MetricDef) -> tuple[str, ...]:
    """The sample names a metric produces in the text format (histograms add _bucket, _sum and _count)."""
    if metric.kind == "histogram":
        return (f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count")
    return (metric.name,)


def exported_series() -> set[str]:
    """Every sample name of the contract (what a dashboard or rule may query)."""
    return {s for m in CONTRACT.values() for s in series_names(m)}


def validate_contract() -> None:
    """Check the naming rules on the whole table (a test runs this)."""
    for m in CONTRACT.values():
        owner_of(m.name)
        if m.kind == "counter" and not m.name.endswith("_total"):
            raise ValueError(f"counter {m.name} must end in _total")
        if m.kind != "counter" and m.name.endswith("_total"):
            raise ValueError(f"{m.kind} {m.name} must not end in _total")
