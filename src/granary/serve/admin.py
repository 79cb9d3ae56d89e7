"""The admin API of the supervisor: backends, status and metrics, behind token auth through the security layer."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from granary.errors import AuthorizationError, GranaryError
from granary.serve.errors import BackendNotFoundError

if TYPE_CHECKING:
    from granary.serve.gateway import Gateway

log = logging.getLogger(__name__)


class AdminAuth:
    """Who may call the admin API.

    With ``GRANARY_AUTH=tokens`` a caller presents a Granary API token (``Authorization: Bearer gry_...``); it is
    authenticated by the principal registry and authorized by the Guard: reading needs the ``list`` action
    (a reader role on the tenant), changes need the ``gateway`` action (admin role and admin scope). Refusals
    and changes are audited. In the single-user default (``local``), the caller must present the secret the
    gateway wrote to its state file (mode 0600), which proves it runs as the gateway's OS user.

    Args:
        mode: ``local`` or ``tokens``.
        local_secret: the state file's secret (local mode).
        catalog_url: the catalog holding principals, tokens and the audit log (tokens mode).
    """

    def __init__(self, mode: str, *, local_secret: str, catalog_url: str | None = None) -> None:
        self.mode = mode
        self.local_secret = local_secret
        self.catalog_url = catalog_url
        self._catalog: Any = None

    def _guard(self, token: str) -> Any:
        from granary.catalog import open_catalog
        from granary.config import Settings
        from granary.secure.guard import Guard
        from granary.secure.settings import SecureSettings
        from granary.secure.tokens import PrincipalRegistry

        settings = Settings.from_env()
        if self._catalog is None:
            self._catalog = open_catalog(self.catalog_url or settings.catalog_url)
        principal = PrincipalRegistry(self._catalog).authenticate(token)
        secure = SecureSettings.from_env(settings.home, auth="tokens", token=token, origin="gateway-admin")
        return Guard(self._catalog, secure, principal=principal)

    def check(self, header: str | None, *, write: bool, what: str) -> Any:
        """Authenticate and authorize a call (blocking: run it in a thread); returns the Guard (None in local
        mode) with which a change is audited once it succeeded.

        Raises:
            AuthorizationError: no, a bad, or an insufficient credential.
        """
        token = header[7:].strip() if header and header.lower().startswith("bearer ") else None
        if self.mode != "tokens":
            if not token or not hmac.compare_digest(token, self.local_secret):
                raise AuthorizationError("the gateway admin API needs its secret",
                                         hint="run the CLI as the gateway's user (it reads the state file)")
            return None
        if not token:
            raise AuthorizationError("the gateway admin API needs a token (Authorization: Bearer gry_...)",
                                     hint="set GRANARY_TOKEN to a token from `granary token issue`")
        guard = self._guard(token)
        guard.authorize("gateway" if write else "list", "*", obj=f"gateway:{what}")
        return guard


def _json_error(status: int, message: str, hint: str | None = None) -> web.Response:
    return web.json_response({"error": message, "hint": hint}, status=status)


def admin_app(gateway: Gateway, auth: AdminAuth) -> web.Application:
    """The admin application: ``/admin/...`` (authenticated), ``/metrics`` and ``/healthz`` (open)."""

    async def authorized(request: web.Request, *, write: bool, what: str) -> tuple[web.Response | None, Any]:
        try:
            guard = await asyncio.to_thread(auth.check, request.headers.get("Authorization"), write=write, what=what)
        except AuthorizationError as exc:
            gateway.metrics_reject_admin()
            status = 403 if request.headers.get("Authorization") else 401
            return _json_error(status, Exception.__str__(exc), exc.hint), None
        except GranaryError as exc:  # authentication errors and catalog trouble
            gateway.metrics_reject_admin()
            return _json_error(401, Exception.__str__(exc), exc.hint), None
        return None, guard

    async def body_of(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json() if request.can_read_body else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"body is not JSON: {exc}"}),
                                     content_type="application/json") from exc
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text=json.dumps({"error": "body must be a JSON object"}),
                                     content_type="application/json")
        return data

    async def change(request: web.Request, what: str, details: dict[str, Any], fn: Any) -> web.Response:
        denied, guard = await authorized(request, write=True, what=what)
        if denied is not None:
            return denied
        try:
            result = fn()
        except BackendNotFoundError as exc:
            return _json_error(404, Exception.__str__(exc), exc.hint)
        except (GranaryError, ValueError, TypeError) as exc:
            return _json_error(400, Exception.__str__(exc), getattr(exc, "hint", None))
        if guard is not None:
            await asyncio.to_thread(guard.record, "gateway", "*", obj=f"gateway:{what}", details=details)
        await gateway.broadcast_and_wait()
        return web.json_response({"ok": True, "backend": result, "version": gateway.table.version})

    async def list_backends(request: web.Request) -> web.Response:
        denied, _ = await authorized(request, write=False, what="list")
        return denied or web.json_response(await gateway.backends())

    async def status(request: web.Request) -> web.Response:
        denied, _ = await authorized(request, write=False, what="status")
        return denied or web.json_response(await gateway.status())

    async def add(request: web.Request) -> web.Response:
        d = await body_of(request)
        route, name = str(d.get("route", "")), str(d.get("name", ""))
        return await change(request, f"backend.add:{route}/{name}", d, lambda: gateway.add_backend(
            route, name, d.get("url"), d.get("weight", 1.0)))

    async def remove(request: web.Request) -> web.Response:
        route, name = request.match_info["route"], request.match_info["name"]
        return await change(request, f"backend.remove:{route}/{name}", {}, lambda: gateway.remove_backend(route, name))

    async def weight(request: web.Request) -> web.Response:
        d = await body_of(request)
        route, name = request.match_info["route"], request.match_info["name"]
        return await change(request, f"backend.weight:{route}/{name}", d,
                            lambda: gateway.set_weight(route, name, d.get("weight")))

    async def drain(request: web.Request) -> web.Response:
        d = await body_of(request)
        route, name = request.match_info["route"], request.match_info["name"]
        draining = bool(d.get("draining", True))
        return await change(request, f"backend.drain:{route}/{name}", d,
                            lambda: gateway.set_draining(route, name, draining))

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = gateway.metrics_text()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "workers": gateway.num_workers})

    app = web.Application(client_max_size=64 * 1024)
    app.add_routes([
        web.get("/admin/backends", list_backends), web.post("/admin/backends", add),
        web.delete("/admin/backends/{route}/{name}", remove),
        web.post("/admin/backends/{route}/{name}/weight", weight),
        web.post("/admin/backends/{route}/{name}/drain", drain),
        web.get("/admin/status", status), web.get("/metrics", metrics), web.get("/healthz", healthz),
    ])
    return app
