"""Settings of the HTTP server: address, auth mode, CORS, TLS and page sizes."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from granary.errors import ConfigError

DEFAULT_PORT = 8470
DEFAULT_PAGE = 50
MAX_PAGE = 500


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(kw_only=True, frozen=True)
class ServerSettings:
    """How ``granary server`` listens and whom it lets in.

    Attributes:
        host: address to bind (``GRANARY_SERVER_HOST``, default 127.0.0.1).
        port: TCP port (``GRANARY_SERVER_PORT``, default 8470).
        auth: ``local`` (every request acts as the local admin; loopback only) or ``tokens`` (a bearer token
            from ``granary token issue`` on every request, deny by default); ``GRANARY_AUTH``.
        cors_origins: origins allowed to call the API from a browser (``GRANARY_SERVER_CORS``, comma separated;
            default none: CORS off).
        tls_cert: PEM certificate file to serve HTTPS directly (``GRANARY_SERVER_TLS_CERT``).
        tls_key: PEM private key of ``tls_cert`` (``GRANARY_SERVER_TLS_KEY``).
        root_path: path prefix when served behind a reverse proxy under a sub-path (``GRANARY_SERVER_ROOT_PATH``).
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    auth: Literal["local", "tokens"] = "local"
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    root_path: str = ""

    def __post_init__(self) -> None:
        if self.auth not in ("local", "tokens"):
            raise ConfigError(f"GRANARY_AUTH must be 'local' or 'tokens', got {self.auth!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"server port must be in 0..65535, got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("give both a TLS certificate and its key (--tls-cert and --tls-key), or neither")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ConfigError(f"TLS file {path} does not exist", hint="pass the PEM files' paths")
        if self.auth == "local" and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to serve {self.host} with GRANARY_AUTH=local: every caller would act as the local admin",
                hint="bind 127.0.0.1 (and put a reverse proxy in front), or set GRANARY_AUTH=tokens and issue "
                     "tokens with `granary token issue`")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> ServerSettings:
        """Read the settings from ``environ`` (default ``os.environ``), then apply non-None ``overrides``."""
        env = os.environ if environ is None else environ
        cert, key = env.get("GRANARY_SERVER_TLS_CERT"), env.get("GRANARY_SERVER_TLS_KEY")
        values: dict[str, object] = {
            "host": env.get("GRANARY_SERVER_HOST") or "127.0.0.1",
            "port": _port(env.get("GRANARY_SERVER_PORT")),
            "auth": (env.get("GRANARY_AUTH") or "local").strip().lower(),
            "cors_origins": tuple(o.strip() for o in (env.get("GRANARY_SERVER_CORS") or "").split(",") if o.strip()),
            "tls_cert": Path(cert) if cert else None,
            "tls_key": Path(key) if key else None,
            "root_path": env.get("GRANARY_SERVER_ROOT_PATH") or "",
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _port(raw: str | None) -> int:
    if not raw:
        return DEFAULT_PORT
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"GRANARY_SERVER_PORT must be an integer, got {raw!r}") from None
