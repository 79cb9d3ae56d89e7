"""What the application holds for its lifetime: settings, the catalog and the store it serves."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from granary.api.config import ServerSettings
from granary.api.rawsql import RawReader
from granary.catalog import Catalog
from granary.config import Settings
from granary.secure.settings import SecureSettings
from granary.secure.tokens import Principal
from granary.store import Store


@dataclass
class AppState:
    """Shared by every request (``app.state.granary``).

    Attributes:
        settings: the store settings.
        server: the server settings.
        secure: security settings (the per-request token replaces ``token``).
        catalog: the open catalog.
        store: the store; requests use bound copies of it (see :func:`granary.api.deps.bind`).
        raw: the precompiled list and detail queries (:mod:`granary.api.rawsql`).
        reports: quality reports computed so far, by version id (versions are immutable).
        principals: recently authenticated tokens (sha256 of the token -> when, principal); see deps.AUTH_CACHE_S.
        views: store views bound to a recent caller, by (token hash or ``local``, client origin) -> (when, view),
            so a caller's repeated requests share the view's read gate (each grant audited once per AUTH_CACHE_S).
        overviews: the overview figures by tenant (None: all) -> (when computed, Overview); see OVERVIEW_TTL_S.
    """

    settings: Settings
    server: ServerSettings
    secure: SecureSettings
    catalog: Catalog
    store: Store
    raw: RawReader
    reports: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    reports_lock: Lock = field(default_factory=Lock)
    principals: dict[bytes, tuple[float, Principal]] = field(default_factory=dict)
    views: dict[tuple[bytes, str], tuple[float, Store]] = field(default_factory=dict)
    overviews: dict[str | None, tuple[float, Any]] = field(default_factory=dict)
    overview_lock: Lock = field(default_factory=Lock)
