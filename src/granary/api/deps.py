"""Binding a request to the store: who is calling (bearer token or the local admin) and a store view that
authorises and audits every read and write as that principal.

:func:`bind` is the one place that does it. Every route takes a :class:`Context` through it and reads data only
through ``ctx.store`` (Store methods) and ``ctx.guard`` (decisions and audit), never behind them. The view is
``Store.bind`` of the server's store to the request's principal: it shares the catalog, objects and manifest cache
and has its own read gate, which authorises and audits every read as that principal. A route that reads data for
a declared purpose binds once more: ``ctx.store.bind(purpose=...)``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Annotated

from fastapi import Depends, Request

from granary.api.rawsql import RawReader
from granary.api.state import AppState
from granary.catalog import Catalog
from granary.secure.errors import AuthenticationError
from granary.secure.guard import Guard
from granary.secure.hooks import SecureHooks
from granary.secure.tokens import Principal
from granary.store import Store

# A valid token's principal is remembered this long, so a revoked or expired token, or a disabled principal,
# stops working within AUTH_CACHE_S (the library's long-running processes re-check every 60 s). Refusals are
# never cached: each is checked and audited.
AUTH_CACHE_S = 10.0
MAX_CACHED_TOKENS = 10_000


@dataclass(frozen=True)
class Context:
    """What a route works with.

    Attributes:
        store: a view of the server's store whose hooks authorise and audit as ``principal``.
        guard: the principal's guard (decisions, audit records).
        principal: who is calling.
        catalog: the catalog (metadata queries for paging; data goes through ``store``).
        raw: the precompiled list and detail queries (metadata only, like ``catalog``).
    """

    store: Store
    guard: Guard
    principal: Principal
    catalog: Catalog
    raw: RawReader


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def bind(request: Request) -> Context:
    """Authenticate the request and bind the store to its principal (:meth:`granary.store.Store.bind`).

    In ``local`` mode every request acts as the local admin (the server then only listens on loopback). In
    ``tokens`` mode a missing, unknown, expired or revoked token is refused with 401, and the refusal audited.
    Runs on the event loop (no threadpool hop): a remembered token costs no query; a new one costs the lookup.
    """
    state: AppState = request.app.state.granary
    token = bearer_token(request)
    origin = f"http:{request.client.host if request.client else '?'}"
    key = hashlib.sha256(token.encode()).digest() if token and state.server.auth == "tokens" else None
    principal = _cached(state, key)
    if principal is None:
        principal = _authenticate(state, request, token, origin)
        if key is not None:
            _remember(state, key, principal)
    view = _view(state, key if key is not None else b"local", origin, principal)
    hooks = view.hooks
    assert isinstance(hooks, SecureHooks)  # the server's store always runs the security layer
    return Context(store=view, guard=hooks.guard, principal=principal, catalog=state.catalog, raw=state.raw)


def _view(state: AppState, key: bytes, origin: str, principal: Principal) -> Store:
    """The store bound to ``principal`` for requests from ``origin``, shared by that caller's requests for
    AUTH_CACHE_S: its read gate then audits a repeated grant (opening the same dataset again) once per period,
    as the library's long-running processes do, instead of writing an audit record per request."""
    now = time.monotonic()
    hit = state.views.get((key, origin))
    if hit is not None and now - hit[0] < AUTH_CACHE_S and hit[1].hooks.guard.principal == principal:  # type: ignore[attr-defined]
        return hit[1]
    view = state.store.bind(principal=principal)
    hooks = view.hooks
    assert isinstance(hooks, SecureHooks)
    hooks.guard.audit.origin = origin  # the bound guard is this caller's own: its records name the client
    if len(state.views) >= MAX_CACHED_TOKENS:
        state.views.clear()
    state.views[(key, origin)] = (now, view)
    return view


def _authenticate(state: AppState, request: Request, token: str | None, origin: str) -> Principal:
    """Who holds ``token`` (the local admin in ``local`` mode); refusals are audited and raised."""
    guard = Guard(state.catalog, replace(state.secure, auth=state.server.auth, token=token, origin=origin))
    if state.server.auth == "tokens" and token is None:
        guard.audit.append(principal="anonymous", action="authenticate", outcome="denied",
                           object=f"http:{request.method} {request.url.path}",
                           details={"reason": "no bearer token"})
        raise AuthenticationError("no API token given", hint="send `Authorization: Bearer <token>` with a token "
                                                             "from `granary token issue`")
    return guard.principal  # authenticates (and audits a refusal)


def _cached(state: AppState, key: bytes | None) -> Principal | None:
    hit = state.principals.get(key) if key is not None else None
    if hit is None or time.monotonic() - hit[0] >= AUTH_CACHE_S:
        return None
    return hit[1]


def _remember(state: AppState, key: bytes, principal: Principal) -> None:
    if len(state.principals) >= MAX_CACHED_TOKENS:
        state.principals.clear()  # a flood of distinct valid tokens: start over rather than grow
    state.principals[key] = (time.monotonic(), principal)


Ctx = Annotated[Context, Depends(bind)]
