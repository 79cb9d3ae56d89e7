"""Typed settings read from the environment, with defaults that work on a laptop."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from granary.errors import ConfigError

DEFAULT_SHARD_SIZE_BYTES = 128 * 1024 * 1024
DEFAULT_ROW_GROUP_BYTES = 8 * 1024 * 1024
DEFAULT_GC_GRACE_S = 3600.0


@dataclass(kw_only=True, frozen=True)
class Settings:
    """Where Granary keeps its catalog and objects, and the store's tuning knobs.

    Attributes:
        home: local state directory (``GRANARY_HOME``, default ``~/.granary``).
        catalog_url: SQLAlchemy URL of the catalog (``GRANARY_CATALOG_URL``; default a SQLite file in ``home``).
        storage_url: root of the object store (``GRANARY_STORAGE_URL``; default ``home/objects``; ``s3://...`` works).
        shard_size_bytes: target uncompressed size of a document shard (``GRANARY_SHARD_SIZE_BYTES``).
        row_group_bytes: target uncompressed size of a Parquet row group (``GRANARY_ROW_GROUP_BYTES``).
        gc_grace_s: objects younger than this are never collected (``GRANARY_GC_GRACE_S``).
        author: default commit author (``GRANARY_AUTHOR``, else the login name).
        storage_options: extra fsspec options (e.g. ``endpoint_url`` via ``GRANARY_S3_ENDPOINT_URL``).
    """

    home: Path
    catalog_url: str
    storage_url: str
    shard_size_bytes: int = DEFAULT_SHARD_SIZE_BYTES
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES
    gc_grace_s: float = DEFAULT_GC_GRACE_S
    author: str = "granary"
    storage_options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shard_size_bytes < 1024:
            raise ConfigError(f"shard_size_bytes must be at least 1024, got {self.shard_size_bytes}")
        if self.row_group_bytes < 1024:
            raise ConfigError(f"row_group_bytes must be at least 1024, got {self.row_group_bytes}")
        if self.gc_grace_s < 0:
            raise ConfigError(f"gc_grace_s must be >= 0, got {self.gc_grace_s}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from environment variables (or ``environ``), then apply ``overrides``."""
        env = os.environ if environ is None else environ
        home = Path(env.get("GRANARY_HOME", "~/.granary")).expanduser()
        options: dict[str, str] = {}
        if env.get("GRANARY_S3_ENDPOINT_URL"):
            options["endpoint_url"] = env["GRANARY_S3_ENDPOINT_URL"]
        values: dict[str, object] = {
            "home": home,
            "catalog_url": env.get("GRANARY_CATALOG_URL") or f"sqlite:///{home / 'catalog.db'}",
            "storage_url": env.get("GRANARY_STORAGE_URL") or str(home / "objects"),
            "shard_size_bytes": _int(env, "GRANARY_SHARD_SIZE_BYTES", DEFAULT_SHARD_SIZE_BYTES),
            "row_group_bytes": _int(env, "GRANARY_ROW_GROUP_BYTES", DEFAULT_ROW_GROUP_BYTES),
            "gc_grace_s": _float(env, "GRANARY_GC_GRACE_S", DEFAULT_GC_GRACE_S),
            "author": env.get("GRANARY_AUTHOR") or env.get("USER") or "granary",
            "storage_options": options,
        }
        values.update(overrides)
        if "home" in overrides and "catalog_url" not in overrides and not env.get("GRANARY_CATALOG_URL"):
            values["catalog_url"] = f"sqlite:///{Path(str(values['home'])) / 'catalog.db'}"
        if "home" in overrides and "storage_url" not in overrides and not env.get("GRANARY_STORAGE_URL"):
            values["storage_url"] = str(Path(str(values["home"])) / "objects")
        values["home"] = Path(str(values["home"])).expanduser()
        return cls(**values)  # type: ignore[arg-type]


def _int(env: object, name: str, default: int) -> int:
    raw = env.get(name)  # type: ignore[attr-defined]
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: object, name: str, default: float) -> float:
    raw = env.get(name)  # type: ignore[attr-defined]
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
