"""The demo's watch step: node readings, the detectors on them, an injected GPU fault, energy of the demo's jobs.

This machine has no GPU, so the demo's node reports two GPUs through the fake NVML backend and one of them
gets an XID; the watcher records the alert without acting (the demo's scheduler has already stopped).
"""

from __future__ import annotations

import time
from typing import Any

from granary.catalog import open_catalog
from granary.config import Settings
from granary.monitor.agent import NodeAgent, NodeAgentConfig
from granary.monitor.energy import account_finished, report
from granary.monitor.gpu import FakeNvml
from granary.monitor.series import SeriesStore
from granary.monitor.watcher import Watcher, WatcherConfig


def run(settings: Settings, console: Any) -> dict[str, Any]:
    """Sample the node, inject an XID, evaluate the detectors, account energy; returns a summary."""
    catalog = open_catalog(settings.catalog_url)
    fake = FakeNvml.with_gpus(2, power_w=250.0)
    agent = NodeAgent(NodeAgentConfig(node="demo-local", store_every_s=0.0), gpu=fake,
                      gpu_status="fake NVML (no GPU on this machine)", series=SeriesStore(catalog))
    samples = 0
    for i in range(4):
        if i == 3:
            fake.inject_xid(1, 79)  # the fault the watcher should report
        fake.advance(0.2)
        samples += len(agent.sample())
        time.sleep(0.2)
    watcher = Watcher(catalog, WatcherConfig(act=False))
    found, _ = watcher.evaluate()
    account_finished(catalog)
    energy = report(catalog, by="job", since=time.time() - 3600)
    console.print("   see them with: granary alerts; granary energy --by job", highlight=False)
    return {"readings": samples,
            "alerts": [f"{f.detector} ({f.severity}): {f.summary}" for f in found],
            "energy_wh": {r["job"]: round(r["facility_kwh"] * 1000, 3) for r in energy}}
