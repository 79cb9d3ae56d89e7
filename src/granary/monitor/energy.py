"""Energy per job attempt, tenant and day: from NVML energy counters, else GPU power, else the power model.

Each finished attempt gets one ``monitor_job_energy`` row (IT energy in joules and its source). Reports apply
the facility overhead (PUE) and carbon intensity from the settings ``GRANARY_PUE`` (default 1.3) and
``GRANARY_CARBON_G_PER_KWH`` (default 400 gCO2e/kWh).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa

from granary.catalog import Catalog
from granary.errors import ConfigError
from granary.monitor import tables as t
from granary.monitor.host import Sample
from granary.monitor.power import PowerModel
from granary.monitor.series import Series, SeriesStore

J_PER_KWH = 3.6e6


@dataclass(kw_only=True, frozen=True)
class EnergySettings:
    """Facility overhead and carbon intensity.

    Attributes:
        pue: power usage effectiveness (facility energy / IT energy), >= 1.
        carbon_g_per_kwh: grams of CO2e per facility kWh.
    """

    pue: float = 1.3
    carbon_g_per_kwh: float = 400.0

    def __post_init__(self) -> None:
        if self.pue < 1.0 or self.carbon_g_per_kwh < 0:
            raise ConfigError(f"need PUE >= 1 and carbon >= 0, got {self.pue} and {self.carbon_g_per_kwh}")

    @classmethod
    def from_env(cls) -> EnergySettings:
        """Read ``GRANARY_PUE`` and ``GRANARY_CARBON_G_PER_KWH``."""
        try:
            return cls(pue=float(os.environ.get("GRANARY_PUE") or 1.3),
                       carbon_g_per_kwh=float(os.environ.get("GRANARY_CARBON_G_PER_KWH") or 400.0))
        except ValueError as exc:
            raise ConfigError(f"GRANARY_PUE and GRANARY_CARBON_G_PER_KWH must be numbers: {exc}") from None


def _integrate(s: Series) -> float | None:
    ok = np.isfinite(s.values)
    if ok.sum() < 2:
        return None
    ts, v = s.ts[ok], s.values[ok]
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(ts)))


def _counter_delta(s: Series) -> float | None:
    v = s.values[np.isfinite(s.values)]
    if len(v) < 2 or v[-1] < v[0]:
        return None  # too few samples, or the counter reset (driver reload): fall back
    return float(v[-1] - v[0])


def attempt_energy(series: SeriesStore, *, node: str, gpu_ids: list[int], start: float, end: float,
                   cpu_share: float, model: PowerModel) -> tuple[float, str]:
    """Joules used by an attempt on ``node`` between ``start`` and ``end``, and the source of the figure."""
    total, sources = 0.0, set()
    for g in gpu_ids:
        match = {"node": node, "gpu": str(g)}
        counter = series.read("granary_gpu_energy_joules_total", since=start, until=end, match=match)
        got = _counter_delta(counter[0]) if counter else None
        if got is None:
            power = series.read("granary_gpu_power_watts", since=start, until=end, match=match)
            got = _integrate(power[0]) if power else None
        if got is None:
            got, src = model.gpu_w(1.0) * (end - start), "model"
        else:
            src = "nvml"
        total += got
        sources.add(src)
    cpu = [s for s in series.read("granary_energy_node_power_watts", since=start, until=end, match={"node": node})
           if s.labels.get("source") in ("rapl", "model")]
    cpu_j = _integrate(cpu[0]) if cpu else None
    if cpu_j is None:
        cpu_j = model.cpu_w(cpu_share) * (end - start)
        sources.add("model")
    else:
        sources.add(cpu[0].labels["source"])
    total += cpu_j * cpu_share
    source = "nvml" if sources == {"nvml"} or sources == {"nvml", "rapl"} else sorted(sources)[0]
    return total, source


def account_finished(catalog: Catalog, *, model: PowerModel | None = None) -> int:
    """Add an energy row for every ended attempt that has none; returns how many were added."""
    from granary.sched import tables as st

    model = model or PowerModel()
    series = SeriesStore(catalog)
    q = (sa.select(st.attempts.c.job_id, st.attempts.c.attempt, st.attempts.c.node, st.attempts.c.gpu_ids,
                   st.attempts.c.started_at, st.attempts.c.ended_at, st.jobs.c.tenant, st.jobs.c.spec,
                   st.nodes.c.cpus)
         .join(st.jobs, st.jobs.c.id == st.attempts.c.job_id)
         .join(st.nodes, st.nodes.c.name == st.attempts.c.node, isouter=True)
         .join(t.job_energy, (t.job_energy.c.job_id == st.attempts.c.job_id)
               & (t.job_energy.c.attempt == st.attempts.c.attempt), isouter=True)
         .where(st.attempts.c.ended_at.is_not(None), st.attempts.c.started_at.is_not(None),
                t.job_energy.c.job_id.is_(None)))
    with catalog.read() as conn:
        rows = conn.execute(q).all()
    added = 0
    for r in rows:
        spec = json.loads(r.spec)
        cpus = float(spec.get("cpus_per_replica") or 1.0)
        share = min(1.0, cpus / r.cpus) if r.cpus else 1.0
        start, end = float(r.started_at), max(float(r.ended_at), float(r.started_at))
        gpus = json.loads(r.gpu_ids)
        joules, source = attempt_energy(series, node=r.node, gpu_ids=gpus, start=start, end=end, cpu_share=share,
                                        model=model)
        tok = series.read("granary_train_tokens_total", since=start, until=end, match={"job": r.job_id})
        tokens = int(sum(_counter_delta(s) or 0.0 for s in tok)) if tok else None
        with catalog.write() as conn:
            exists = conn.execute(sa.select(t.job_energy.c.job_id).where(
                t.job_energy.c.job_id == r.job_id, t.job_energy.c.attempt == r.attempt)).first()
            if exists is None:  # another watcher may have accounted it meanwhile
                conn.execute(t.job_energy.insert().values(
                    job_id=r.job_id, attempt=r.attempt, tenant=r.tenant, node=r.node, gpus=len(gpus),
                    started_at=start, ended_at=end, energy_j=joules, source=source, tokens=tokens))
                added += 1
    return added


def report(catalog: Catalog, *, by: Literal["job", "tenant", "day", "node"] = "job", since: float | None = None,
           settings: EnergySettings | None = None) -> list[dict[str, Any]]:
    """Energy per job, tenant, node or UTC day: IT kWh, facility kWh (x PUE), kg CO2e, tokens, J per token."""
    if by not in ("job", "tenant", "day", "node"):
        raise ValueError(f"by must be job, tenant, day or node, got {by!r}")
    settings = settings or EnergySettings.from_env()
    q = sa.select(t.job_energy)
    if since is not None:
        q = q.where(t.job_energy.c.ended_at >= since)
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"attempts": 0, "energy_j": 0.0, "tokens": 0,
                                                             "gpu_h": 0.0, "sources": set()})
    with catalog.read() as conn:
        for r in conn.execute(q):
            key = {"job": r.job_id, "tenant": r.tenant, "node": r.node,
                   "day": time.strftime("%Y-%m-%d", time.gmtime(r.ended_at))}[by]
            g = groups[key]
            g["attempts"] += 1
            g["energy_j"] += r.energy_j
            g["tokens"] += r.tokens or 0
            g["gpu_h"] += r.gpus * (r.ended_at - r.started_at) / 3600.0
            g["sources"].add(r.source)
    out = []
    for key in sorted(groups):
        g = groups[key]
        it_kwh = g["energy_j"] / J_PER_KWH
        out.append({by: key, "attempts": g["attempts"], "gpu_h": g["gpu_h"], "it_kwh": it_kwh,
                    "facility_kwh": it_kwh * settings.pue,
                    "co2_kg": it_kwh * settings.pue * settings.carbon_g_per_kwh / 1000.0,
                    "tokens": g["tokens"] or None,
                    "j_per_token": g["energy_j"] * settings.pue / g["tokens"] if g["tokens"] else None,
                    "sources": ",".join(sorted(g["sources"]))})
    return out


def energy_samples(catalog: Catalog) -> list[Sample]:
    """``granary_energy_tenant_joules_total`` from the accounted attempts."""
    q = sa.select(t.job_energy.c.tenant, sa.func.sum(t.job_energy.c.energy_j)).group_by(t.job_energy.c.tenant)
    with catalog.read() as conn:
        return [("granary_energy_tenant_joules_total", (("tenant", tenant),), float(j or 0.0))
                for tenant, j in conn.execute(q)]
