"""The watcher: runs the detectors on stored series, records events, asks the scheduler to act, notifies.

A hung job (its step counter stalls while the scheduler says it runs) gets a restart request; a node with a
GPU hardware fault (XID, uncorrectable ECC, fallen off the bus) gets an evacuation request. The controller
carries both out (granary.sched.controller). Missing data alone never drains a node: a node that stops
reporting is an ``node_silent`` event with no action (the scheduler's heartbeat timeout handles lost nodes).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from granary.catalog import Catalog
from granary.errors import GranaryError
from granary.monitor import detect
from granary.monitor.energy import account_finished
from granary.monitor.events import EventLog, Finding
from granary.monitor.notify import WebhookConfig, WebhookNotifier
from granary.monitor.series import Series, SeriesStore

log = logging.getLogger(__name__)

DETECTORS = ("stall", "throughput_regression", "straggler", "loss_spike", "grad_norm_spike", "xid", "ecc",
             "gpu_lost", "disk_fill", "loader_starvation", "node_silent", "clock_skew")


@dataclass(kw_only=True, frozen=True)
class WatcherConfig:
    """Knobs of the watcher.

    Attributes:
        interval_s: seconds between evaluations.
        lookback_s: how much history the detectors see.
        silent_after_s: a node with no sample for this long is reported silent (no action).
        skew_tolerance_s: samples stamped further in the future than this are reported as clock skew.
        act: file restart/evacuate requests (False: only record and notify).
        retention_s: samples older than this are deleted (checked once an hour).
        webhooks: receivers.
    """

    interval_s: float = 5.0
    lookback_s: float = 600.0
    silent_after_s: float = 30.0
    skew_tolerance_s: float = 5.0
    act: bool = True
    retention_s: float = 7 * 86400.0
    webhooks: tuple[WebhookConfig, ...] = ()
    stall: detect.StallDetector = field(default_factory=detect.StallDetector)
    regression: detect.RegressionDetector = field(default_factory=detect.RegressionDetector)
    spike: detect.SpikeDetector = field(default_factory=detect.SpikeDetector)
    straggler: detect.StragglerDetector = field(default_factory=detect.StragglerDetector)
    hardware: detect.HardwareDetector = field(default_factory=detect.HardwareDetector)
    disk: detect.DiskFillDetector = field(default_factory=detect.DiskFillDetector)
    starvation: detect.StarvationDetector = field(default_factory=detect.StarvationDetector)

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.lookback_s <= 0:
            raise ValueError("interval_s and lookback_s must be > 0")


def _by(series: list[Series], *keys: str) -> dict[tuple[str, ...], list[Series]]:
    out: dict[tuple[str, ...], list[Series]] = defaultdict(list)
    for s in series:
        if all(k in s.labels for k in keys):
            out[tuple(s.labels[k] for k in keys)].append(s)
    return out


def _align(a: Series, b: Series) -> tuple[np.ndarray, np.ndarray]:
    _, ia, ib = np.intersect1d(a.ts, b.ts, return_indices=True)
    return a.values[ia], b.values[ib]


class Watcher:
    """Evaluates the detectors over the catalog's series.

    Args:
        catalog: the catalog shared with agents and the scheduler.
        config: the knobs.
        clock: wall-clock time source.
    """

    def __init__(self, catalog: Catalog, config: WatcherConfig | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.config = config or WatcherConfig()
        self.clock = clock
        self.series = SeriesStore(catalog)
        self.events = EventLog(catalog)
        self.notifiers = [WebhookNotifier(self.events, w) for w in self.config.webhooks]
        self._pruned_at = -math.inf

    # ------------------------------------------------------------------ findings
    def findings(self, now: float) -> list[Finding]:
        """What fires at ``now`` (the last sample of each series decides)."""
        since = now - self.config.lookback_s
        out: list[Finding] = []
        out += self._jobs(since)
        out += self._hardware(since)
        out += self._disks(since)
        out += self._nodes(now, since)
        return out

    def _attempt_starts(self) -> dict[str, float]:
        """When each running job's current attempt started (older samples belong to an earlier attempt)."""
        from granary.sched import tables as st

        q = (sa.select(st.attempts.c.job_id, sa.func.max(st.attempts.c.created_at))
             .join(st.jobs, (st.jobs.c.id == st.attempts.c.job_id) & (st.jobs.c.attempt == st.attempts.c.attempt))
             .where(st.jobs.c.state == "running").group_by(st.attempts.c.job_id))
        with self.catalog.read() as conn:
            return {job: float(at) for job, at in conn.execute(q)}

    def _not_running(self) -> set[str]:
        """Jobs the scheduler knows that are not running now (their last pushed values linger in the agents)."""
        from granary.sched import tables as st

        with self.catalog.read() as conn:
            return {j for (j,) in conn.execute(sa.select(st.jobs.c.id).where(st.jobs.c.state != "running"))}

    def _jobs(self, since: float) -> list[Finding]:
        c = self.config
        out: list[Finding] = []
        starts = self._attempt_starts()
        idle = self._not_running()

        def cut(s: Series) -> Series:
            job = s.labels.get("job", "")
            t0 = math.inf if job in idle else starts.get(job, since)  # jobs unknown to the scheduler: all samples
            keep = s.ts >= t0
            return Series(s.name, s.labels, s.ts[keep], s.values[keep])

        steps = _by([cut(s) for s in self.series.read("granary_train_step", since=since)], "job")
        for (job,), ss in steps.items():
            for s in ss:
                if len(s.values) and c.stall.scan(s.values)[-1]:
                    last = int(np.nanmax(s.values)) if np.isfinite(s.values).any() else None
                    flat = float(s.ts[-1] - s.ts[np.nonzero(s.values != s.values[-1])[0][-1] + 1]) \
                        if (s.values != s.values[-1]).any() else float(s.ts[-1] - s.ts[0])
                    out.append(Finding("stall", "critical", {"job": job},
                                       f"job {job} made no progress for {flat:.0f} s (step {last})",
                                       {"rank": s.labels.get("rank"), "step": last, "flat_s": flat},
                                       action="restart"))
                    break
            for s in ss[:1]:
                if len(s.ts) > 2:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        rate = np.concatenate([[np.nan], np.diff(s.values) / np.diff(s.ts)])
                    if c.regression.scan(rate)[-1]:
                        out.append(Finding("throughput_regression", "warning", {"job": job},
                                           f"job {job} runs at {rate[-1]:.3g} steps/s, under its baseline",
                                           {"rate": float(rate[-1]), "baseline": float(np.nanmedian(rate))}))
        for metric, name in (("granary_train_loss", "loss_spike"), ("granary_train_grad_norm", "grad_norm_spike")):
            for (job, rank), ss in _by([cut(s) for s in self.series.read(metric, since=since)], "job", "rank").items():
                s = ss[0]
                if len(s.values) and c.spike.scan(s.values)[-1]:
                    out.append(Finding(name, "warning", {"job": job, "rank": rank},
                                       f"job {job} rank {rank}: {metric.split('_', 2)[2]} jumped to {s.values[-1]:.4g}",
                                       {"value": float(s.values[-1]), "median": float(np.nanmedian(s.values))}))
        times = _by([cut(s) for s in self.series.read("granary_train_step_seconds", since=since)], "job")
        for (job,), ss in times.items():
            out += self._stragglers(job, ss)
        waits = {(s.labels.get("job"), s.labels.get("rank")): s
                 for s in self.series.read("granary_train_data_wait_seconds", since=since)}
        for (job,), ss in times.items():
            for s in ss:
                w = waits.get((job, s.labels.get("rank")))
                if w is None:
                    continue
                wv, sv = _align(w, s)
                if len(wv) and c.starvation.scan(wv, sv)[-1]:
                    out.append(Finding("loader_starvation", "warning", {"job": job, "rank": s.labels["rank"]},
                                       f"job {job} rank {s.labels['rank']} waits for data "
                                       f"{wv[-1] / sv[-1]:.0%} of each step", {"wait_s": float(wv[-1]),
                                                                                "step_s": float(sv[-1])}))
        return out

    def _stragglers(self, job: str, ss: list[Series]) -> list[Finding]:
        if len(ss) < 3:
            return []
        t0 = min(float(s.ts[0]) for s in ss if len(s.ts))
        step = self.config.interval_s
        n = int(max(float(s.ts[-1]) for s in ss if len(s.ts)) - t0) // max(1, int(step)) + 1
        n = min(n, 10000)
        m = np.full((len(ss), n), np.nan)
        for r, s in enumerate(ss):
            idx = np.clip(((s.ts - t0) // max(1, int(step))).astype(int), 0, n - 1)
            m[r, idx] = s.values
        firing = self.config.straggler.scan(m)
        out = []
        for r, s in enumerate(ss):
            if firing[r, -1]:
                out.append(Finding("straggler", "warning", {"job": job, "rank": s.labels.get("rank", "?")},
                                   f"job {job} rank {s.labels.get('rank')} steps in {m[r, -1]:.3g} s against a "
                                   f"median of {np.nanmedian(m[:, -1]):.3g} s", {"step_s": float(m[r, -1])}))
        return out

    def _hardware(self, since: float) -> list[Finding]:
        hw = self.config.hardware
        out = []
        for metric, name, what in (("granary_gpu_xid_errors_total", "xid", "an XID error"),
                                   ("granary_gpu_ecc_uncorrected_errors_total", "ecc", "uncorrectable ECC errors")):
            for s in self.series.read(metric, since=since):
                if len(s.values) and hw.scan(s.values)[-1]:
                    node, gpu = s.labels.get("node", "?"), s.labels.get("gpu", "?")
                    out.append(Finding(name, "critical", {"node": node, "gpu": gpu},
                                       f"GPU {gpu} on {node} reported {what} (count {s.values[-1]:.0f})",
                                       {"count": float(s.values[-1])}, action="evacuate"))
        for s in self.series.read("granary_gpu_up", since=since):
            if len(s.values) and hw.scan_up(s.values)[-1]:
                node, gpu = s.labels.get("node", "?"), s.labels.get("gpu", "?")
                out.append(Finding("gpu_lost", "critical", {"node": node, "gpu": gpu},
                                   f"GPU {gpu} on {node} fell off the bus (NVML: GPU is lost)", {},
                                   action="evacuate"))
        return out

    def _disks(self, since: float) -> list[Finding]:
        out = []
        sizes = {(s.labels.get("node"), s.labels.get("mount")): s
                 for s in self.series.read("granary_node_filesystem_size_bytes", since=since)}
        for used in self.series.read("granary_node_filesystem_used_bytes", since=since):
            key = (used.labels.get("node"), used.labels.get("mount"))
            size = sizes.get(key)
            if size is None or not np.isfinite(size.values).any() or not len(used.values):
                continue
            total = float(np.nanmax(size.values))
            if self.config.disk.scan(used.ts, used.values, total)[-1]:
                ttf = self.config.disk.time_to_full(used.ts, used.values, total)
                out.append(Finding("disk_fill", "warning", {"node": key[0] or "?", "mount": key[1] or "?"},
                                   f"{key[1]} on {key[0]} is {used.values[-1] / total:.0%} full"
                                   + ("" if ttf == float("inf") else f", full in {ttf / 3600:.1f} h at this rate"),
                                   {"used_bytes": float(used.values[-1]), "size_bytes": total,
                                    "time_to_full_s": None if ttf == float("inf") else ttf}))
        return out

    def _nodes(self, now: float, since: float) -> list[Finding]:
        out = []
        for s in self.series.read("granary_node_load1", since=since - self.config.lookback_s):
            node = s.labels.get("node", "?")
            last = float(s.ts[-1]) if len(s.ts) else None
            if last is None:
                continue
            if last > now + self.config.skew_tolerance_s:
                out.append(Finding("clock_skew", "warning", {"node": node},
                                   f"node {node} stamps samples {last - now:.0f} s in the future; check NTP",
                                   {"ahead_s": last - now}))
            elif now - last > self.config.silent_after_s:
                out.append(Finding("node_silent", "warning", {"node": node},
                                   f"node {node} sent no sample for {now - last:.0f} s (no action: missing data "
                                   "alone never drains a node)", {"silent_s": now - last}))
        return out

    # ------------------------------------------------------------------- acting
    def evaluate(self, now: float | None = None) -> tuple[list[Finding], dict[str, str]]:
        """One round: detect, act, record, notify. Returns the findings and what was done per fingerprint."""
        from granary.sched.journal import list_nodes, request_evacuate, request_restart

        now = self.clock() if now is None else now
        found = self.findings(now)
        actions: dict[str, str] = {}
        if self.config.act:
            firing_before = {e["fingerprint"] for e in self.events.list(states=("firing",))}
            up = {n["name"] for n in list_nodes(self.catalog) if n["status"] == "up"}
            running = self._attempt_starts()
            for f in found:
                if f.fingerprint in firing_before or f.action is None:
                    continue
                try:
                    if f.action == "restart" and f.labels["job"] in running:
                        rid = request_restart(self.catalog, f.labels["job"], f.summary, requested_by="watch",
                                              now=now)
                        actions[f.fingerprint] = f"restart requested (request {rid})"
                    elif f.action == "evacuate" and f.labels["node"] in up:
                        rid = request_evacuate(self.catalog, f.labels["node"], f.summary, requested_by="watch",
                                               now=now)
                        actions[f.fingerprint] = f"evacuation requested (request {rid})"
                except GranaryError as exc:  # the job or node went away meanwhile
                    actions[f.fingerprint] = f"no action: {exc}"
        self.events.sync(found, now, actions=actions, scope=DETECTORS)
        account_finished(self.catalog)
        if now - self._pruned_at >= 3600.0:
            self._pruned_at = now
            removed = self.series.prune(now - self.config.retention_s)
            if removed:
                log.info("deleted %d samples older than %.0f s", removed, self.config.retention_s)
        for n in self.notifiers:
            n.notify(now)
        return found, actions

    def run(self, stop: threading.Event) -> None:
        """Evaluate every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.evaluate()
            except GranaryError as exc:
                log.error("watch evaluation failed: %s", exc)
            stop.wait(max(0.0, self.config.interval_s - (time.monotonic() - started)))
