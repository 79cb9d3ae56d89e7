"""A small synchronous client of the gateway's admin API (used by the CLI; usable from any Python program)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from granary.errors import ServeError
from granary.serve.errors import GatewayUnreachableError


def read_state(name: str = "default") -> dict[str, Any]:
    """The state file a running gateway left in ``$GRANARY_HOME/gateway/NAME.json``."""
    from granary.serve.gateway import state_dir

    path = state_dir() / f"{name}.json"
    try:
        return dict(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise GatewayUnreachableError(str(path), "no gateway of that name is running on this machine",
                                      hint=f"start it with `granary gateway up --config FILE` (name: {name!r}), "
                                           "or pass --admin-url") from None
    except (OSError, ValueError) as exc:
        raise GatewayUnreachableError(str(path), f"unreadable state file: {exc}") from exc


class GatewayClient:
    """Calls the admin API of a running gateway.

    Args:
        admin_url: ``http://host:port`` of the admin listener.
        token: a Granary API token (tokens mode) or the gateway's local secret.
        timeout_s: per call.
    """

    def __init__(self, admin_url: str, token: str | None = None, *, timeout_s: float = 10.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    @classmethod
    def for_gateway(cls, name: str = "default", *, admin_url: str | None = None) -> GatewayClient:
        """A client for a gateway on this machine: its URL and secret come from its state file; with
        ``GRANARY_AUTH=tokens`` the token comes from ``GRANARY_TOKEN`` instead."""
        token = os.environ.get("GRANARY_TOKEN") if (os.environ.get("GRANARY_AUTH") or "").lower() == "tokens" else None
        if admin_url is not None:
            return cls(admin_url, token)
        state = read_state(name)
        return cls(str(state["admin_url"]), token or str(state.get("secret", "")))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.admin_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read())
            except ValueError:
                detail = {"error": exc.reason}
            message = str(detail.get("error", exc.reason))
            if exc.code in (401, 403):
                raise GatewayUnreachableError(self.admin_url, f"refused ({exc.code}): {message}",
                                              hint=detail.get("hint") or "check GRANARY_TOKEN") from None
            raise ServeError(message, hint=detail.get("hint") or "check the arguments") from None
        except (urllib.error.URLError, OSError) as exc:
            raise GatewayUnreachableError(self.admin_url, f"cannot connect ({exc})") from None

    def backends(self) -> dict[str, Any]:
        """Every route's backends with live counters."""
        return dict(self._call("GET", "/admin/backends"))

    def status(self) -> dict[str, Any]:
        """Addresses, workers and their views."""
        return dict(self._call("GET", "/admin/status"))

    def add(self, route: str, name: str, url: str, weight: float = 1.0) -> dict[str, Any]:
        """Add a backend to a route."""
        return dict(self._call("POST", "/admin/backends", {"route": route, "name": name, "url": url,
                                                           "weight": weight}))

    def remove(self, route: str, name: str) -> dict[str, Any]:
        """Remove (drain, then drop) a backend."""
        return dict(self._call("DELETE", f"/admin/backends/{route}/{name}"))

    def set_weight(self, route: str, name: str, weight: float) -> dict[str, Any]:
        """Change a backend's weight."""
        return dict(self._call("POST", f"/admin/backends/{route}/{name}/weight", {"weight": weight}))

    def drain(self, route: str, name: str, draining: bool = True) -> dict[str, Any]:
        """Drain (or undrain) a backend."""
        return dict(self._call("POST", f"/admin/backends/{route}/{name}/drain", {"draining": draining}))

    def metrics(self) -> str:
        """The Prometheus exposition."""
        req = urllib.request.Request(self.admin_url + "/metrics")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return str(resp.read().decode())
        except (urllib.error.URLError, OSError) as exc:
            raise GatewayUnreachableError(self.admin_url, f"cannot connect ({exc})") from None
