"""Principals (users and service accounts) and their API tokens: random, shown once, stored hashed, scoped, expiring."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Literal

import sqlalchemy as sa

from granary.catalog import Catalog
from granary.errors import AlreadyExistsError, NotFoundError
from granary.secure import tables as t
from granary.secure.errors import AuthenticationError
from granary.secure.keys import check_tenant

PrincipalKind = Literal["user", "service", "local"]
SCOPES = ("read", "write", "admin")
PRINCIPAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
CLEARANCE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
TOKEN_RE = re.compile(r"gry_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
MAX_TTL_S = 366 * 86400.0


@dataclass(kw_only=True, frozen=True)
class Principal:
    """Who is calling.

    Attributes:
        name: unique name (``alice``, ``svc-trainer``, ``local:me``).
        kind: user, service, or local (the single-user default admin).
        tenant: the tenant it belongs to.
        clearances: attribute clearances (e.g. ``pii``); ``*`` holds all.
        scopes: what the token used allows (read, write, admin); None when not restricted by a token.
        token_id: the token used to authenticate, if any.
    """

    name: str
    kind: PrincipalKind
    tenant: str
    clearances: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] | None = None
    token_id: str | None = None

    @property
    def is_local_admin(self) -> bool:
        """The local single-user default principal, admin of everything."""
        return self.kind == "local"

    def holds(self, clearance: str) -> bool:
        """Whether the principal holds ``clearance``."""
        return "*" in self.clearances or clearance in self.clearances


@dataclass(kw_only=True, frozen=True)
class IssuedToken:
    """A freshly issued token; ``secret`` is shown once and never stored."""

    token_id: str
    principal: str
    secret: str
    scopes: tuple[str, ...]
    expires_at: float | None


def check_principal_name(name: str) -> str:
    """Return ``name`` if it is a valid principal name, else raise ValueError."""
    if not isinstance(name, str) or not PRINCIPAL_RE.fullmatch(name) or ".." in name:
        raise ValueError(f"invalid principal name {name!r}: use 1-128 letters, digits, '.', '_', '@' or '-'")
    return name


def _check_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValueError(f"token scopes must be a non-empty subset of {SCOPES}, got {list(scopes)}")
    return tuple(sorted(set(scopes)))


def _digest(secret: str) -> str:
    # the secret is 256 random bits, so a fast hash is as strong as a slow one here
    return hashlib.sha256(secret.encode()).hexdigest()


class PrincipalRegistry:
    """Creates principals, issues, checks and revokes their tokens (changes are audited by the caller).

    Args:
        catalog: the catalog.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def add(self, name: str, *, kind: PrincipalKind = "user", tenant: str = "default",
            clearances: tuple[str, ...] = ()) -> Principal:
        """Create a principal."""
        check_principal_name(name)
        check_tenant(tenant)
        if kind not in ("user", "service"):
            raise ValueError(f"principal kind must be user or service, got {kind!r}")
        for c in clearances:
            if c != "*" and not CLEARANCE_RE.fullmatch(c):
                raise ValueError(f"invalid clearance {c!r}: use a-z, 0-9, '_', '.', '-'")
        with self.catalog.write() as conn:
            if conn.execute(sa.select(t.principals.c.name).where(t.principals.c.name == name)).first():
                raise AlreadyExistsError(f"principal {name} already exists",
                                         hint="choose another name or `granary principal show NAME`")
            conn.execute(t.principals.insert().values(
                name=name, kind=kind, tenant=tenant, clearances=json.dumps(sorted(set(clearances))),
                created_at=time.time(), disabled=False))
        return Principal(name=name, kind=kind, tenant=tenant, clearances=frozenset(clearances))

    def get(self, name: str) -> Principal:
        """Look a principal up by name."""
        with self.catalog.read() as conn:
            row = conn.execute(sa.select(t.principals).where(t.principals.c.name == name)).first()
        if row is None:
            raise NotFoundError(f"no principal named {name}", hint="list them with `granary principal list`")
        return Principal(name=row.name, kind=row.kind, tenant=row.tenant,
                         clearances=frozenset(json.loads(row.clearances)))

    def is_disabled(self, name: str) -> bool:
        """Whether the principal ``name`` is disabled (an unknown name counts as disabled)."""
        with self.catalog.read() as conn:
            row = conn.execute(sa.select(t.principals.c.disabled).where(t.principals.c.name == name)).first()
        return row is None or bool(row.disabled)

    def principals(self) -> list[dict[str, object]]:
        """All principals as dicts."""
        with self.catalog.read() as conn:
            rows = conn.execute(sa.select(t.principals).order_by(t.principals.c.name)).all()
        return [{**r._asdict(), "clearances": json.loads(r.clearances)} for r in rows]

    def set_disabled(self, name: str, disabled: bool) -> None:
        """Disable (every token stops working) or re-enable a principal."""
        self.get(name)
        with self.catalog.write() as conn:
            conn.execute(t.principals.update().where(t.principals.c.name == name).values(disabled=disabled))

    def issue(self, principal: str, *, scopes: tuple[str, ...] = ("read",), ttl_s: float | None = 30 * 86400.0
              ) -> IssuedToken:
        """Issue a token for ``principal``; the returned secret is the only copy.

        ``ttl_s=None`` asks for the longest lifetime allowed, 366 days: no token lives forever.
        """
        self.get(principal)
        scopes = _check_scopes(scopes)
        if ttl_s is None:
            ttl_s = MAX_TTL_S
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"token lifetime must be in (0, {MAX_TTL_S:.0f}] seconds, got {ttl_s}")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        expires = now + ttl_s
        with self.catalog.write() as conn:
            conn.execute(t.tokens.insert().values(
                id=token_id, principal=principal, secret_hash=_digest(secret), scopes=json.dumps(scopes),
                created_at=now, expires_at=expires, revoked_at=None))
        return IssuedToken(token_id=token_id, principal=principal, secret=f"gry_{token_id}_{secret}",
                           scopes=scopes, expires_at=expires)

    def revoke(self, token_id: str) -> None:
        """Revoke a token for good."""
        with self.catalog.write() as conn:
            n = conn.execute(t.tokens.update().where(t.tokens.c.id == token_id, t.tokens.c.revoked_at.is_(None))
                             .values(revoked_at=time.time())).rowcount
        if n == 0:
            raise NotFoundError(f"no live token {token_id}", hint="list tokens with `granary token list`")

    def tokens(self, principal: str | None = None) -> list[dict[str, object]]:
        """Token metadata (never the secrets)."""
        query = sa.select(t.tokens.c.id, t.tokens.c.principal, t.tokens.c.scopes, t.tokens.c.created_at,
                          t.tokens.c.expires_at, t.tokens.c.revoked_at).order_by(t.tokens.c.created_at)
        if principal is not None:
            query = query.where(t.tokens.c.principal == principal)
        with self.catalog.read() as conn:
            return [{**r._asdict(), "scopes": json.loads(r.scopes)} for r in conn.execute(query)]

    def authenticate(self, token: str | None, *, now: float | None = None) -> Principal:
        """The principal a token belongs to; AuthenticationError when missing, malformed, unknown,
        expired, revoked or its principal is disabled."""
        if not token:
            raise AuthenticationError("no API token given (GRANARY_AUTH=tokens)",
                                      hint="set GRANARY_TOKEN to a token from `granary token issue`")
        match = TOKEN_RE.fullmatch(token.strip())
        if match is None:
            raise AuthenticationError("malformed API token", hint="tokens look like gry_<16 hex>_<43 chars>")
        token_id, secret = match.groups()
        with self.catalog.read() as conn:
            row = conn.execute(sa.select(t.tokens).where(t.tokens.c.id == token_id)).first()
            prow = None if row is None else conn.execute(
                sa.select(t.principals).where(t.principals.c.name == row.principal)).first()
        if row is None or prow is None or not hmac.compare_digest(row.secret_hash, _digest(secret)):
            raise AuthenticationError(f"unknown API token {token_id}",
                                      hint="issue a new one with `granary token issue`")
        now = time.time() if now is None else now
        if row.revoked_at is not None:
            raise AuthenticationError(f"API token {token_id} was revoked", hint="ask an admin for a new token")
        if row.expires_at is not None and now >= row.expires_at:
            raise AuthenticationError(f"API token {token_id} expired", hint="ask an admin for a new token")
        if prow.disabled:
            raise AuthenticationError(f"principal {prow.name} is disabled", hint="ask an admin to re-enable it")
        return Principal(name=prow.name, kind=prow.kind, tenant=prow.tenant,
                         clearances=frozenset(json.loads(prow.clearances)),
                         scopes=frozenset(json.loads(row.scopes)), token_id=token_id)
