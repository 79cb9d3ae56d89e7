"""Prometheus exposition of the monitor's readings: collectors over samples and over the scheduler's tables."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import sqlalchemy as sa

from granary.catalog import Catalog
from granary.errors import MissingDependencyError
from granary.monitor.host import Labels, Sample
from granary.monitor.names import CONTRACT, MetricDef


def _pc() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise MissingDependencyError("prometheus-client", "monitor") from exc
    return prometheus_client


def families(samples: Iterable[Sample], *, extra: Mapping[str, str] | None = None) -> list[Any]:
    """Group samples into prometheus_client metric families typed by the name contract.

    Args:
        samples: ``(name, labels, value)`` readings; names must be in the contract.
        extra: labels added to every sample (e.g. ``node``).
    """
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    grouped: dict[str, list[tuple[Labels, float]]] = defaultdict(list)
    for name, labels, value in samples:
        grouped[name].append((labels, value))
    out = []
    extra_items = tuple((extra or {}).items())
    for name, rows in grouped.items():
        mdef = CONTRACT.get(name)
        kind = mdef.kind if mdef else "gauge"
        doc = mdef.help if mdef else name
        if kind == "counter":
            fam: Any = CounterMetricFamily(name.removesuffix("_total"), doc)
        else:
            fam = GaugeMetricFamily(name, doc)
        for labels, value in rows:
            lab = dict(extra_items + tuple(labels))
            fam.add_sample(name, lab, value)
        out.append(fam)
    return out


class SampleCollector:
    """A prometheus_client collector that yields whatever ``source()`` returns at scrape time."""

    def __init__(self, source: Callable[[], list[Any]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        """The families of the current readings."""
        yield from self.source()

    def describe(self) -> list[Any]:
        """Nothing up front (the families change with what is pushed)."""
        return []


def render(collect: Callable[[], list[Any]]) -> bytes:
    """The text exposition of a list of families."""
    pc = _pc()
    registry = pc.CollectorRegistry(auto_describe=False)
    registry.register(SampleCollector(collect))
    return bytes(pc.generate_latest(registry))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render_samples(samples: Iterable[Sample], *, extra: Mapping[str, str] | None = None) -> bytes:
    """The text exposition (format 0.0.4) of samples, typed by the name contract.

    Written directly rather than through prometheus_client's collectors: a scrape of a few thousand series
    then costs a few milliseconds instead of a few hundred on a loaded machine (benchmarks/watch_bench.py).
    """
    grouped: dict[str, list[tuple[Labels, float]]] = defaultdict(list)
    for name, labels, value in samples:
        grouped[name].append((labels, value))
    prefix = tuple((extra or {}).items())
    lines: list[str] = []
    for name, rows in grouped.items():
        mdef = CONTRACT.get(name)
        doc = (mdef.help if mdef else name).replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {mdef.kind if mdef else 'gauge'}")
        for labels, value in rows:
            pairs = prefix + tuple(labels)
            if pairs:
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
                lines.append(f"{name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{name} {_number(value)}")
    lines.append("")
    return "\n".join(lines).encode()


def parse(text: str) -> list[Sample]:
    """Parse a text exposition into samples (for `granary metrics URL` and tests)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: list[Sample] = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.append((s.name, tuple(sorted(s.labels.items())), float(s.value)))
    return out


def sched_samples(catalog: Catalog, *, now: float | None = None) -> list[Sample]:
    """The ``granary_sched_*`` gauges read from the scheduler's tables (the controller's metrics)."""
    from granary.sched import tables as st
    from granary.sched.model import ACTIVE, TERMINAL

    now = time.time() if now is None else now
    out: list[Sample] = []
    with catalog.read() as conn:
        q = sa.select(st.jobs.c.state, sa.func.count()).group_by(st.jobs.c.state)
        by_state: dict[str, int] = {state: int(n) for state, n in conn.execute(q)}
        for state in sorted({*ACTIVE, *TERMINAL, "pending", *by_state}):
            out.append(("granary_sched_jobs", (("state", state),), float(by_state.get(state, 0))))
        nodes = conn.execute(sa.select(st.nodes.c.status, st.nodes.c.gpus, st.nodes.c.last_heartbeat)).all()
        by_status: dict[str, int] = defaultdict(int)
        for n in nodes:
            by_status[n.status] += 1
        for status in ("up", "draining", "down"):
            out.append(("granary_sched_nodes", (("status", status),), float(by_status.get(status, 0))))
        out.append(("granary_sched_gpus", (), float(sum(n.gpus for n in nodes if n.status != "down"))))
        used = 0
        for (ids,) in conn.execute(sa.select(st.attempts.c.gpu_ids).where(st.attempts.c.state.in_(st.ATTEMPT_OPEN))):
            used += len(json.loads(ids))
        out.append(("granary_sched_gpus_used", (), float(used)))
        beats = [now - n.last_heartbeat for n in nodes if n.status == "up"]
        out.append(("granary_sched_node_heartbeat_age_seconds", (), max(beats) if beats else 0.0))
        requests = getattr(st, "requests", None)
        if requests is not None:
            q = sa.select(requests.c.kind, requests.c.state, sa.func.count()).group_by(requests.c.kind,
                                                                                      requests.c.state)
            for kind, state, count in conn.execute(q):
                out.append(("granary_sched_requests", (("kind", kind), ("state", state)), float(count)))
    return out


def check_sample(name: str, labels: Mapping[str, str], value: Any) -> str | None:
    """Why a pushed sample is refused (a short reason label), or None when it is acceptable."""
    mdef: MetricDef | None = CONTRACT.get(name)
    if mdef is None:
        return "unknown_metric"
    if mdef.owner == "monitor" and not name.startswith("granary_curate_"):
        return "reserved_metric"  # host and GPU metrics come from the agent itself
    if mdef.kind == "histogram":
        return "histogram_not_pushable"
    allowed = set(mdef.labels) | {"job"}
    if not set(labels) <= allowed:
        return "bad_labels"
    if not all(isinstance(v, str) and 0 < len(v) <= 128 for v in labels.values()):
        return "bad_labels"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "bad_value"
    if mdef.kind == "counter" and not math.isnan(value) and value < 0:
        return "bad_value"
    return None
