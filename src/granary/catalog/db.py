"""Engine creation, SQLite tuning, write transactions and migrations for the catalog."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from granary.errors import CatalogError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_upgraded: set[str] = set()
_upgrade_lock = threading.Lock()


class Catalog:
    """A handle on the catalog database.

    Use :meth:`read` for reads and :meth:`write` for transactions that modify state. On SQLite,
    :meth:`write` takes the write lock up front (``BEGIN IMMEDIATE``) so that concurrent writers
    queue on the busy timeout instead of failing when a read lock cannot be upgraded.

    Args:
        engine: a SQLAlchemy engine (see :func:`open_catalog`).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.url = engine.url
        self.is_sqlite = engine.dialect.name == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection inside a (deferred) transaction, for consistent reads."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection inside a write transaction that commits on success and rolls back on error."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(granary_immediate=True)
            with conn.begin():
                yield conn

    def upgrade(self) -> None:
        """Bring the schema to the newest revision of every subsystem's migration branch."""
        upgrade(self.engine)

    def dispose(self) -> None:
        """Close pooled connections (call before forking or at shutdown)."""
        self.engine.dispose()


def open_catalog(url: str, *, migrate: bool = True, **engine_kwargs: Any) -> Catalog:
    """Open (and by default migrate) the catalog at a SQLAlchemy URL.

    ``postgresql://`` URLs use the psycopg 3 driver. SQLite files get WAL journaling, a 30 s busy
    timeout and foreign keys.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:////home/me/.granary/catalog.db`` or ``postgresql://127.0.0.1/test``.
        migrate: run pending migrations first.
        **engine_kwargs: passed to :func:`sqlalchemy.create_engine`.

    Raises:
        CatalogError: the database is unreachable or cannot be migrated.
    """
    engine = create_engine(url, **engine_kwargs)
    catalog = Catalog(engine)
    if migrate:
        try:
            catalog.upgrade()
        except sa.exc.OperationalError as exc:
            raise CatalogError(
                f"cannot reach the catalog at {engine.url.render_as_string(hide_password=True)}: {exc.orig}",
                hint="check GRANARY_CATALOG_URL and that the database server is running",
            ) from exc
    return catalog


def create_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with Granary's dialect settings."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 30.0, "check_same_thread": False})
        engine = sa.create_engine(url, **kwargs)
        _tune_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    try:
        return sa.create_engine(url, **kwargs)
    except ModuleNotFoundError as exc:
        raise CatalogError(
            f"no database driver for {url.split(':', 1)[0]}: {exc}",
            hint="for PostgreSQL install it with: pip install 'granary[postgres]'",
        ) from exc


def _tune_sqlite(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("granary_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def upgrade(engine: Engine) -> None:
    """Run Alembic to ``heads`` unless this process already did for this URL."""
    key = engine.url.render_as_string(hide_password=False)
    if key in _upgraded:
        return
    with _upgrade_lock:
        if key in _upgraded:
            return
        if _current_heads(engine) == script_heads():
            _upgraded.add(key)  # up to date: skip importing Alembic (~0.3 s on every process start)
            return
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        script = ScriptDirectory.from_config(cfg)
        heads = set(script.get_heads())
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
        if current != heads:
            log.info("migrating catalog %s to %s", engine.url.render_as_string(hide_password=True), heads)
            with engine.connect() as conn:
                conn = conn.execution_options(granary_immediate=True)
                with conn.begin():
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "heads")
        _upgraded.add(key)


_REVISION_RE = re.compile(r'^revision\s*=\s*["\']([^"\']+)["\']', re.M)
_DOWN_RE = re.compile(r"^down_revision\s*=\s*(.+)$", re.M)
_DEPENDS_RE = re.compile(r"^depends_on\s*=\s*(.+)$", re.M)


def script_heads() -> set[str]:
    """The revisions Alembic's version table holds once the schema is at the scripts' heads, read from the
    files without importing Alembic.

    Every revision file states ``revision = "..."``, ``down_revision = ...`` and ``depends_on = ...`` on their
    own lines (see migrations/README.md). A head is a revision no other revision names as its parent; Alembic
    leaves out of its table a head that another head depends on (``depends_on``, directly or through parents),
    so those are left out here too (``api_0001`` depends on ``store_0001``, which no other revision descends
    from: without this, every process start saw a mismatch and imported Alembic, ~0.3 s idle, > 1 s loaded).
    """
    down: dict[str, set[str]] = {}
    needs: dict[str, set[str]] = {}
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        rev, parent, deps = _REVISION_RE.search(text), _DOWN_RE.search(text), _DEPENDS_RE.search(text)
        if rev is None or parent is None:
            return set()  # unexpected layout: let Alembic decide
        down[rev.group(1)] = set(re.findall(r'["\']([^"\']+)["\']', parent.group(1)))
        needs[rev.group(1)] = set(re.findall(r'["\']([^"\']+)["\']', deps.group(1))) if deps else set()
    heads = set(down) - {p for ps in down.values() for p in ps}
    below: set[str] = set()
    stack = [p for head in heads for p in down[head] | needs[head]]
    while stack:
        name = stack.pop()
        if name not in below:
            below.add(name)
            stack.extend(down.get(name, set()) | needs.get(name, set()))
    return heads - below


def _current_heads(engine: Engine) -> set[str]:
    try:
        with engine.connect() as conn:
            return {row[0] for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version")}
    except sa.exc.DBAPIError:
        return set()  # no alembic_version table yet


def forget_upgrades() -> None:
    """Forget which URLs were migrated in this process (for tests that drop schemas)."""
    _upgraded.clear()
