"""Recurring backups through Granary's own scheduler: `granary backup schedule`, a controller and a local agent
running the jobs as real processes, each run a real `granary backup create` + `prune`."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from granary.catalog import open_catalog
from granary.cli.main import app
from granary.config import Settings
from granary.sched.agent import Agent, AgentConfig
from granary.sched.controller import Controller, ControllerConfig
from granary.sched.journal import list_jobs
from granary.sched.model import NodeSpec
from granary.sched.recurring import list_recurring
from granary.store import open_store
from granary.store.sync import Remote
from granary.store.sync.backup import list_backups, verify_backup


def test_a_scheduled_backup_runs_every_period_and_each_backup_passes_a_restore_drill(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "site"
    monkeypatch.setenv("GRANARY_HOME", str(home))
    for var in ("GRANARY_CATALOG_URL", "GRANARY_STORAGE_URL"):
        monkeypatch.delenv(var, raising=False)
    store = open_store(Settings.from_env())
    store.create_dataset("web")
    store.commit_table("web", pa.table({"id": ["1", "2", "3"], "text": ["a", "b", "c"]}), message="one")
    dest = tmp_path / "backups"
    result = CliRunner().invoke(app, ["backup", "schedule", str(dest), "--every", "2s", "--keep-last", "5",
                                      "--json"])
    assert result.exit_code == 0, result.output
    catalog = open_catalog(store.settings.catalog_url)
    controller = Controller(catalog, ControllerConfig(tick_s=0.1))
    agent = Agent(catalog, AgentConfig(node=NodeSpec(name="n1", gpus=0, cpus=2), work_dir=tmp_path / "agent",
                                       poll_s=0.1))
    agent.register()
    stop = threading.Event()
    threads = [threading.Thread(target=x.run, args=(stop,), daemon=True) for x in (controller, agent)]
    for th in threads:
        th.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = [j for j in list_jobs(catalog) if j.state == "succeeded"]
            failed = [j for j in list_jobs(catalog) if j.state == "failed"]
            assert not failed, f"a backup job failed: {failed}"
            if len(done) >= 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"two backups did not run within 90 s: {list_jobs(catalog)}")
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    assert sorted(j.name for j in done)[:2] == ["backup#1", "backup#2"]
    backups = list_backups(Remote(str(dest)))
    assert len(backups) >= 2
    assert list_recurring(catalog)[0].runs >= 2
    drill = verify_backup(Remote(str(dest)), backups[-1]["id"])
    assert drill.details["versions"] == 1
