"""The metadata database: SQLAlchemy Core over SQLite (default) or PostgreSQL, migrated by Alembic."""

from __future__ import annotations

from granary.catalog.db import Catalog, open_catalog

__all__ = ["Catalog", "open_catalog"]
