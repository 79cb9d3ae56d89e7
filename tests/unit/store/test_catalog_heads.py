"""The catalog's fast start-up path: the heads read from the migration files equal what Alembic records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from granary.catalog import db


def test_script_heads_equal_alembics_version_table(tmp_path: Path) -> None:
    catalog = db.open_catalog(f"sqlite:///{tmp_path / 'c.db'}")  # a new file: migrated by Alembic
    recorded = db._current_heads(catalog.engine)
    assert recorded and db.script_heads() == recorded
    assert "store_0001" not in recorded  # a head that api_0001 depends on: Alembic leaves it out


def test_an_up_to_date_catalog_opens_without_importing_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    db.open_catalog(url)
    code = "import sys; from granary.catalog import db; db.open_catalog(sys.argv[1]); print('alembic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
