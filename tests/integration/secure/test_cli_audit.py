"""The governance CLI end to end, and concurrent audit appenders in real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from granary.catalog import open_catalog
from granary.secure.audit import AuditLog


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("GRANARY_HOME", str(home))
    monkeypatch.setenv("GRANARY_SECURE", "1")
    for var in ("GRANARY_AUTH", "GRANARY_TOKEN", "GRANARY_CATALOG_URL", "GRANARY_STORAGE_URL", "GRANARY_ENCRYPT"):
        monkeypatch.delenv(var, raising=False)
    return home


def _run(*args: str) -> tuple[int, str]:
    from granary.cli.main import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_cli_governance_flow(cli_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from granary.store import open_store

    store = open_store()
    store.create_dataset("web")
    store.commit_table("web", pa.table({"id": ["1", "2", "3"], "text": ["a", "b", "c"],
                                        "subject_id": ["x", "y", "x"]}), message="v1")
    assert _run("policy", "set", "web", "--license", "CC-BY-4.0", "--purpose", "research", "--encrypt")[0] == 0
    assert _run("principal", "add", "alice", "--clearance", "pii")[0] == 0
    assert _run("role", "grant", "alice", "reader", "--dataset", "web")[0] == 0
    code, out = _run("token", "issue", "alice", "--scope", "read", "--json")
    assert code == 0
    token = json.loads(out)["token"]
    code, out = _run("forget", "web", "--subject", "x", "--json")
    assert code == 0 and json.loads(out)["rows_removed"] == 2
    code, out = _run("key", "rotate", "--json")
    assert code == 0 and json.loads(out)["rewrapped"] == 1  # the forget commit wrote one encrypted shard
    assert _run("policy", "budget", "web", "--epsilon", "0.5")[0] == 0
    code, out = _run("policy", "dp-count", "web", "--epsilon", "0.4", "--json")
    assert code == 0 and json.loads(out)["epsilon"] == pytest.approx(0.4)
    code, out = _run("policy", "dp-count", "web", "--epsilon", "0.4")
    assert code == 1 and "budget" in out
    worm = tmp_path / "worm"
    assert _run("audit", "checkpoint", "--export", str(worm))[0] == 0
    code, out = _run("audit", "verify", "--checkpoints", str(worm), "--json")
    assert code == 0 and json.loads(out)["ok"]
    # the reader's token cannot write or see the audit log; both refusals are audited
    monkeypatch.setenv("GRANARY_AUTH", "tokens")
    monkeypatch.setenv("GRANARY_TOKEN", token)
    code, out = _run("audit", "log")
    assert code == 1 and "does not allow audit" in out and "Traceback" not in out
    monkeypatch.setenv("GRANARY_TOKEN", token[:-2] + "zz")
    code, out = _run("audit", "log")
    assert code == 1 and "unknown API token" in out
    monkeypatch.delenv("GRANARY_AUTH")
    code, out = _run("audit", "log", "--outcome", "denied", "--json")
    assert code == 0
    assert {r["action"] for r in json.loads(out)} >= {"audit", "authenticate", "dp.release"}
    # tamper with the log: verify names the record and exits 1
    cat = open_catalog(f"sqlite:///{cli_env / 'catalog.db'}")
    with cat.write() as conn:
        conn.execute(sa.text("UPDATE secure_audit SET principal = 'mallory' WHERE seq = 3"))
    code, out = _run("audit", "verify")
    assert code == 1 and "record 3" in out


WORKER = """
import sys
from granary.catalog import open_catalog
from granary.secure.audit import AuditLog
log = AuditLog(open_catalog(sys.argv[1]), origin="worker-" + sys.argv[2])
for i in range(200):
    log.append(principal="w" + sys.argv[2], action="read", dataset="web", details={"i": i})
"""


def test_concurrent_appenders_keep_one_valid_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    open_catalog(url).dispose()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(i)]) for i in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    log = AuditLog(open_catalog(url))
    report = log.verify()
    assert report.ok and report.records == 600
    assert {r.origin for r in log.query(limit=None)} == {"worker-0", "worker-1", "worker-2"}


KILLED = """
import sys
from granary.catalog import open_catalog
from granary.secure.audit import AuditLog
log = AuditLog(open_catalog(sys.argv[1]), origin="doomed")
print("ready", flush=True)
while True:
    log.append_many([{"principal": "w", "action": "read", "dataset": "web", "details": {"i": i}} for i in range(50)])
"""


def test_killed_appender_leaves_a_valid_chain(tmp_path: Path) -> None:
    import signal
    import time

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    open_catalog(url).dispose()
    proc = subprocess.Popen([sys.executable, "-c", KILLED, url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    watcher = AuditLog(open_catalog(url))
    deadline = time.monotonic() + 60
    while watcher.head()[0] < 200 and time.monotonic() < deadline:  # kill it mid-stream, however slow it is
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    log = AuditLog(open_catalog(url))
    report = log.verify()
    assert report.ok and report.records > 0 and report.records % 50 == 0  # whole batches only
    log.append(principal="after", action="read")
    assert log.verify().ok
