"""The audit chain and data keys on PostgreSQL, with concurrent appenders in real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.conftest import fresh_pg_database

from granary.catalog import open_catalog
from granary.secure.audit import AuditLog
from granary.secure.errors import ShreddedKeyError
from granary.secure.keys import LocalKeyring
from granary.secure.keystore import DataKeyStore

WORKER = """
import sys
from granary.catalog import open_catalog
from granary.secure.audit import AuditLog
log = AuditLog(open_catalog(sys.argv[1]), origin="pg-worker-" + sys.argv[2])
for i in range(150):
    log.append(principal="w" + sys.argv[2], action="read", dataset="web", details={"i": i})
"""


@pytest.mark.postgres
def test_audit_chain_and_keys_on_postgres(pg_url: str, tmp_path: Path) -> None:
    url = fresh_pg_database(pg_url)
    catalog = open_catalog(url)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(i)]) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    log = AuditLog(catalog)
    report = log.verify()
    assert report.ok and report.records == 300
    with catalog.write() as conn:
        conn.execute(sa.text("UPDATE secure_audit SET dataset = 'other' WHERE seq = 200"))
    report = log.verify()
    assert not report.ok and report.first_bad == 200
    keys = DataKeyStore(catalog, LocalKeyring(tmp_path / "keyring.json"))
    ref, dek = keys.create("web", "default")
    assert DataKeyStore(catalog, keys.provider).get(ref) == dek
    assert keys.rotate("default").rewrapped == 1
    keys.shred([ref])
    with pytest.raises(ShreddedKeyError):
        keys.get(ref)
    catalog.dispose()
