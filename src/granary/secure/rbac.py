"""Roles per tenant and per dataset (reader < writer < admin), deny by default, plus attribute rules on tags."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa

from granary.catalog import Catalog
from granary.errors import AuthorizationError, NotFoundError
from granary.secure import tables as t
from granary.secure.tokens import CLEARANCE_RE, Principal

Role = Literal["reader", "writer", "admin"]
ROLE_RANK: dict[str, int] = {"reader": 1, "writer": 2, "admin": 3}
SCOPE_RANK: dict[str, int] = {"read": 1, "write": 2, "admin": 3}

# The least role each store/governance action needs; an unknown action needs admin (deny by default).
ACTION_ROLE: dict[str, Role] = {
    "read": "reader", "list": "reader", "verify": "reader", "export": "reader", "stats": "reader",
    "write": "writer", "create": "writer", "branch": "writer", "tag": "writer", "retire": "writer",
    "rollback": "admin", "delete": "admin", "gc": "admin", "grant": "admin", "policy": "admin",
    "forget": "admin", "key": "admin", "principal": "admin", "token": "admin", "audit": "admin",
    "push": "reader", "pull": "writer", "remote": "admin", "backup": "admin",
}
DEFAULT_RULES: dict[str, str] = {"pii:*": "pii"}


@dataclass(kw_only=True, frozen=True)
class Grant:
    """A role held by a principal on a tenant (all its datasets) or on one dataset."""

    principal: str
    scope_kind: Literal["tenant", "dataset"]
    scope: str
    role: Role


def required_role(action: str) -> Role:
    """The least role ``action`` needs."""
    return ACTION_ROLE.get(action, "admin")


class RoleBook:
    """Grants, attribute rules and the authorization decision.

    Args:
        catalog: the catalog holding ``secure_grants`` and ``secure_rules``.
        tenant_of: the tenant a dataset belongs to (from its policy).
        cache_s: remember a principal's grants and the attribute rules this long (0: ask the catalog every
            time). A grant or revoke through this book is seen at once; one made elsewhere (another process,
            another book) within ``cache_s``. The HTTP server uses 1 s.
    """

    def __init__(self, catalog: Catalog, *, tenant_of: Callable[[str], str] | None = None,
                 cache_s: float = 0.0) -> None:
        if cache_s < 0:
            raise ValueError(f"cache_s must be >= 0, got {cache_s}")
        self.catalog = catalog
        self.tenant_of = tenant_of or (lambda _dataset: "default")
        self.cache_s = cache_s
        self._grants: dict[str, tuple[float, tuple[tuple[str, str, str], ...]]] = {}
        self._rules: tuple[float, dict[str, str]] | None = None

    def forget(self) -> None:
        """Drop what the cache holds (the next decision reads the catalog)."""
        self._grants = {}
        self._rules = None

    # -- grants ---------------------------------------------------------------------------------
    def grant(self, actor: Principal, principal: str, role: Role, *, dataset: str | None = None,
              tenant: str | None = None) -> Grant:
        """Give ``principal`` a role on a dataset or a whole tenant; the actor must be admin of that scope."""
        if role not in ROLE_RANK:
            raise ValueError(f"role must be one of {list(ROLE_RANK)}, got {role!r}")
        kind, scope = self._scope(dataset, tenant)
        self._require_admin(actor, kind, scope, f"grant {role} on {kind} {scope}")
        now = time.time()
        with self.catalog.write() as conn:
            conn.execute(t.grants.delete().where(t.grants.c.principal == principal, t.grants.c.scope_kind == kind,
                                                 t.grants.c.scope == scope))
            conn.execute(t.grants.insert().values(principal=principal, scope_kind=kind, scope=scope, role=role,
                                                  granted_at=now, granted_by=actor.name))
        self.forget()
        return Grant(principal=principal, scope_kind=kind, scope=scope, role=role)

    def revoke(self, actor: Principal, principal: str, *, dataset: str | None = None,
               tenant: str | None = None) -> None:
        """Remove a principal's role on a scope."""
        kind, scope = self._scope(dataset, tenant)
        self._require_admin(actor, kind, scope, f"revoke a role on {kind} {scope}")
        with self.catalog.write() as conn:
            n = conn.execute(t.grants.delete().where(t.grants.c.principal == principal,
                                                     t.grants.c.scope_kind == kind, t.grants.c.scope == scope)).rowcount
        self.forget()
        if n == 0:
            raise NotFoundError(f"{principal} holds no role on {kind} {scope}")

    def grants(self, principal: str | None = None) -> list[Grant]:
        """Every grant (of one principal)."""
        query = sa.select(t.grants).order_by(t.grants.c.principal, t.grants.c.scope_kind, t.grants.c.scope)
        if principal is not None:
            query = query.where(t.grants.c.principal == principal)
        with self.catalog.read() as conn:
            return [Grant(principal=r.principal, scope_kind=r.scope_kind, scope=r.scope, role=r.role)
                    for r in conn.execute(query)]

    def role_of(self, principal: Principal, dataset: str, tenant: str) -> Role | None:
        """The strongest role ``principal`` holds on ``dataset`` (directly or through its tenant)."""
        if principal.is_local_admin:
            return "admin"
        roles: Sequence[str]
        if self.cache_s > 0:
            roles = [role for kind, scope, role in self.held(principal.name)
                     if (kind, scope) in (("dataset", dataset), ("tenant", tenant))]
        else:
            g = t.grants.c
            with self.catalog.read() as conn:
                roles = conn.execute(sa.select(g.role).where(
                    g.principal == principal.name,
                    sa.or_(sa.and_(g.scope_kind == "dataset", g.scope == dataset),
                           sa.and_(g.scope_kind == "tenant", g.scope == tenant)))).scalars().all()
        best = max(roles, key=lambda r: ROLE_RANK[r]) if roles else None
        return best  # type: ignore[return-value]

    def held(self, principal: str) -> tuple[tuple[str, str, str], ...]:
        """Every (scope kind, scope, role) ``principal`` holds: one query, remembered for ``cache_s``."""
        now = time.monotonic()
        hit = self._grants.get(principal)
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]
        g = t.grants.c
        with self.catalog.read() as conn:
            found = tuple((r.scope_kind, r.scope, r.role) for r in conn.execute(
                sa.select(g.scope_kind, g.scope, g.role).where(g.principal == principal)))
        if self.cache_s > 0:
            if len(self._grants) >= 10_000:
                self._grants = {}
            self._grants[principal] = (now, found)
        return found

    # -- attribute rules ------------------------------------------------------------------------
    def add_rule(self, actor: Principal, tag_pattern: str, clearance: str) -> None:
        """Require ``clearance`` to touch datasets with a tag matching ``tag_pattern`` (fnmatch)."""
        self._require_admin(actor, "tenant", actor.tenant, "add attribute rules")
        if not CLEARANCE_RE.fullmatch(clearance) or not tag_pattern or len(tag_pattern) > 128:
            raise ValueError(f"invalid rule {tag_pattern!r} -> {clearance!r}")
        with self.catalog.write() as conn:
            conn.execute(t.rules.delete().where(t.rules.c.tag_pattern == tag_pattern))
            conn.execute(t.rules.insert().values(tag_pattern=tag_pattern, clearance=clearance, created_at=time.time()))
        self.forget()

    def rules(self) -> dict[str, str]:
        """Tag pattern -> clearance, built-in defaults included (remembered for ``cache_s``)."""
        now = time.monotonic()
        if self._rules is not None and now - self._rules[0] < self.cache_s:
            return self._rules[1]
        with self.catalog.read() as conn:
            custom = {r.tag_pattern: r.clearance for r in conn.execute(sa.select(t.rules))}
        rules = {**DEFAULT_RULES, **custom}
        if self.cache_s > 0:
            self._rules = (now, rules)
        return rules

    def missing_clearances(self, principal: Principal, tags: Iterable[str]) -> list[str]:
        """Clearances the tags require that ``principal`` lacks."""
        tags = list(tags)
        if not tags:
            return []
        needed = {c for tag in tags for pattern, c in self.rules().items() if fnmatch.fnmatchcase(tag, pattern)}
        return sorted(c for c in needed if not principal.holds(c))

    # -- the decision ---------------------------------------------------------------------------
    def check(self, principal: Principal, action: str, dataset: str, *, tenant: str,
              tags: Iterable[str] = ()) -> None:
        """Raise AuthorizationError unless ``principal`` may do ``action`` on ``dataset``."""
        need = required_role(action)
        if principal.scopes is not None and SCOPE_RANK[_scope_for(need)] > max(
                (SCOPE_RANK[s] for s in principal.scopes), default=0):
            raise AuthorizationError(
                f"{principal.name}'s token (scopes {sorted(principal.scopes)}) does not allow {action} on {dataset}",
                hint=f"use a token with the {_scope_for(need)!r} scope")
        if principal.tenant != tenant and not principal.is_local_admin and dataset != "*":
            raise AuthorizationError(f"{principal.name} (tenant {principal.tenant}) may not touch {dataset} "
                                     f"of tenant {tenant}", hint="ask an admin of that tenant for a role")
        have = self.role_of(principal, dataset, tenant)
        if have is None or ROLE_RANK[have] < ROLE_RANK[need]:
            raise AuthorizationError(
                f"{principal.name} may not {action} {dataset}: it needs the {need} role and holds "
                f"{have or 'none'}", hint=f"an admin can run `granary role grant {principal.name} {need} "
                f"--dataset {dataset}`")
        missing = self.missing_clearances(principal, tags)
        if missing:
            raise AuthorizationError(
                f"{principal.name} may not {action} {dataset}: its tags need the clearance(s) {missing}",
                hint="an admin can add a clearance with `granary principal clear NAME CLEARANCE`")

    def _require_admin(self, actor: Principal, kind: str, scope: str, what: str) -> None:
        if actor.is_local_admin:
            return
        if actor.scopes is not None and "admin" not in actor.scopes:
            raise AuthorizationError(f"{actor.name} may not {what}: its token lacks the admin scope")
        g = t.grants.c
        with self.catalog.read() as conn:
            tenant = self.tenant_of(scope) if kind == "dataset" else scope
            cond = sa.and_(g.scope_kind == "tenant", g.scope == tenant)
            if kind == "dataset":
                cond = sa.or_(cond, sa.and_(g.scope_kind == "dataset", g.scope == scope))
            roles = conn.execute(sa.select(g.role).where(g.principal == actor.name, cond)).scalars().all()
        if "admin" not in roles:
            raise AuthorizationError(f"{actor.name} may not {what}: only an admin of that scope can",
                                     hint="roles cannot be raised by their holder; ask an admin")

    @staticmethod
    def _scope(dataset: str | None, tenant: str | None) -> tuple[Literal["tenant", "dataset"], str]:
        if (dataset is None) == (tenant is None):
            raise ValueError("give exactly one of dataset or tenant")
        return ("dataset", dataset) if dataset is not None else ("tenant", tenant)  # type: ignore[return-value]


def _scope_for(role: Role) -> str:
    return {"reader": "read", "writer": "write", "admin": "admin"}[role]
