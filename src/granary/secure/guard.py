"""The Guard: who is calling, may they do this, and the audit record of every decision and permission change.

Every entry point (store hooks, CLI, the later HTTP API) goes through one Guard, so enforcement lives in the
library layer. Refusals are audited before they are raised.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from granary.catalog import Catalog
from granary.errors import AuthorizationError, NotFoundError
from granary.secure import tables as t
from granary.secure.audit import AuditLog
from granary.secure.errors import AuthenticationError
from granary.secure.keys import KeyProvider, get_key_provider
from granary.secure.keystore import DataKeyStore, RotationReport
from granary.secure.policy import Policy, PolicyBook, merge
from granary.secure.rbac import Grant, Role, RoleBook
from granary.secure.settings import SecureSettings
from granary.secure.tokens import IssuedToken, Principal, PrincipalKind, PrincipalRegistry

log = logging.getLogger(__name__)

REAUTH_S = 60.0
READ_ACTIONS = frozenset({"read", "export"})  # DP "stats" releases are governed by the budget instead


def local_principal(settings: SecureSettings) -> Principal:
    """The single-user default: the OS user, admin of everything, holding every clearance."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = str(os.getuid())
    return Principal(name=f"local:{user}", kind="local", tenant=settings.tenant, clearances=frozenset({"*"}))


class Guard:
    """Authenticates the caller, authorizes actions and writes the audit trail.

    Args:
        catalog: the catalog.
        settings: security settings (auth mode, token, key provider, tenant, purpose).
        principal: act as this principal instead of authenticating (tests, trusted services).
        cache_s: how long its RoleBook remembers grants and attribute rules (see
            :class:`granary.secure.rbac.RoleBook`); guards it binds keep it. 0 by default; the HTTP server uses 1 s.
    """

    def __init__(self, catalog: Catalog, settings: SecureSettings, *, principal: Principal | None = None,
                 cache_s: float = 0.0) -> None:
        self.catalog = catalog
        self.settings = settings
        self.cache_s = cache_s
        self.audit = AuditLog(catalog, origin=settings.origin)
        self.registry = PrincipalRegistry(catalog)
        self.policies = PolicyBook(catalog)
        self.roles = RoleBook(catalog, tenant_of=lambda d: self.policies.get(d).tenant, cache_s=cache_s)
        self._principal = principal
        self._fixed = principal
        self._auth_at = time.monotonic()
        self._keys: DataKeyStore | None = None

    # -- identity -------------------------------------------------------------------------------
    @property
    def principal(self) -> Principal:
        """The calling principal (authenticated on first use, and again every REAUTH_S in tokens mode so a
        revoked or expired token stops working in long-running processes too)."""
        if self._principal is not None and self._fixed is None and self.settings.auth == "tokens" \
                and time.monotonic() - self._auth_at > REAUTH_S:
            self._principal = None
        if self._principal is None:
            self._auth_at = time.monotonic()
            if self.settings.auth == "local":
                self._principal = local_principal(self.settings)
            else:
                try:
                    self._principal = self.registry.authenticate(self.settings.token)
                except AuthenticationError as exc:
                    token = (self.settings.token or "")[4:20] or None
                    self.audit.append(principal="anonymous", action="authenticate", outcome="denied",
                                      object=f"token:{token}" if token else "", details={"reason": str(exc)})
                    raise
        return self._principal

    def bound(self, *, principal: str | Principal | None = None, token: str | None = None) -> Guard:
        """A guard over the same catalog acting for the holder of ``token`` or the registered ``principal``.

        A token is authenticated at once (refusals audited) and again every REAUTH_S; a principal name is
        trusted (the caller authenticated it) but must exist and not be disabled. A :class:`Principal` object
        is one the caller authenticated itself (a server that caches its token lookups) and is used as is,
        with its token's scopes.
        """
        if token is not None:
            guard = Guard(self.catalog, replace(self.settings, auth="tokens", token=token), cache_s=self.cache_s)
            guard._keys = self._keys
            _ = guard.principal  # authenticate now: a bad token never reaches a read
            return guard
        if principal is None:
            return self
        if isinstance(principal, Principal):
            guard = Guard(self.catalog, self.settings, principal=principal, cache_s=self.cache_s)
            guard._keys = self._keys
            return guard
        local = local_principal(self.settings)
        if principal == local.name and self.settings.auth == "local":
            found = local
        else:
            try:
                found = self.registry.get(principal)
            except NotFoundError:
                found = None
            if found is None or self.registry.is_disabled(principal):
                exc = AuthenticationError(f"no enabled principal named {principal}",
                                          hint="create it with `granary principal add`, or re-enable it")
                self.audit.append(principal="anonymous", action="authenticate", outcome="denied",
                                  object=f"principal:{principal}", details={"reason": str(exc)})
                raise exc
        guard = Guard(self.catalog, self.settings, principal=found, cache_s=self.cache_s)
        guard._keys = self._keys
        return guard

    def allows(self, action: str, dataset: str) -> bool:
        """Whether the principal holds the role (and clearances) for ``action`` on ``dataset``; not audited."""
        principal = self.principal
        policy = self.policies.get(dataset)
        try:
            self.roles.check(principal, action, dataset, tenant=policy.tenant, tags=policy.tags)
        except AuthorizationError:
            return False
        return True

    @property
    def keys(self) -> DataKeyStore:
        """The data-key store over the configured key provider (created on first use)."""
        if self._keys is None:
            self._keys = DataKeyStore(self.catalog, self.key_provider())
        return self._keys

    def key_provider(self) -> KeyProvider:
        """The configured master-key provider."""
        return get_key_provider(self.settings)

    # -- decisions ------------------------------------------------------------------------------
    def authorize(self, action: str, dataset: str, *, purpose: str | None = None, obj: str = "") -> Policy:
        """Allow or refuse (audited) ``action`` on ``dataset``; returns the dataset's policy."""
        principal = self.principal
        policy = Policy(tenant=principal.tenant) if dataset == "*" else self.policies.get(dataset)
        try:
            self.roles.check(principal, action, dataset, tenant=policy.tenant, tags=policy.tags)
            if action in READ_ACTIONS:
                policy.check_purpose(dataset, purpose or self.settings.purpose)
        except AuthorizationError as exc:
            self.audit.append(principal=principal.name, action=action, dataset=dataset, object=obj,
                              outcome="denied", details={"reason": str(exc), "purpose": purpose})
            raise
        return policy

    def authorize_key(self, dataset: str, obj: str) -> None:
        """Allow (or refuse, audited) handing out a data key of ``dataset``: role, tenant and clearances only.

        Purposes are checked where a read is declared (``read_table``, ``iter_batches``, exports); shards are
        also opened by writes (rewrites, forget) that carry no purpose.
        """
        principal = self.principal
        policy = self.policies.get(dataset)
        try:
            self.roles.check(principal, "read", dataset, tenant=policy.tenant, tags=policy.tags)
        except AuthorizationError as exc:
            self.audit.append(principal=principal.name, action="read", dataset=dataset, object=obj,
                              outcome="denied", details={"reason": str(exc)})
            raise

    def record(self, action: str, dataset: str, *, obj: str = "", outcome: str = "ok",
               details: Mapping[str, Any] | None = None) -> int:
        """Append an audit record for the calling principal; returns its sequence number."""
        extra = dict(details or {})
        job = os.environ.get("GRANARY_JOB_ID")
        if job:
            extra.setdefault("job", job)
        if outcome not in ("ok", "denied", "error"):
            extra["status"] = outcome
            outcome = "error"
        return self.audit.append(principal=self.principal.name, action=action, dataset=dataset, object=obj,
                                 outcome=outcome, details=extra)

    def _admin(self, action: str, dataset: str, obj: str, details: Mapping[str, Any]) -> None:
        self.authorize(action, dataset, obj=obj)
        self.record(action, dataset, obj=obj, details=details)

    # -- permission changes (all audited) --------------------------------------------------------
    def add_principal(self, name: str, *, kind: PrincipalKind = "user", tenant: str | None = None,
                      clearances: tuple[str, ...] = ()) -> Principal:
        """Create a principal (tenant admin only)."""
        tenant = tenant or self.principal.tenant
        self._require_tenant_admin("principal", tenant, f"principal:{name}")
        created = self.registry.add(name, kind=kind, tenant=tenant, clearances=clearances)
        self.record("principal.add", "*", obj=f"principal:{name}",
                    details={"kind": kind, "tenant": tenant, "clearances": sorted(clearances)})
        return created

    def set_clearances(self, name: str, clearances: tuple[str, ...]) -> Principal:
        """Replace a principal's clearances (tenant admin only)."""
        target = self.registry.get(name)
        self._require_tenant_admin("principal", target.tenant, f"principal:{name}")
        with self.catalog.write() as conn:
            conn.execute(t.principals.update().where(t.principals.c.name == name)
                         .values(clearances=json.dumps(sorted(set(clearances)))))
            self.audit.append(principal=self.principal.name, action="principal.clearances", dataset="*",
                              object=f"principal:{name}", details={"clearances": sorted(clearances)}, conn=conn)
        return self.registry.get(name)

    def disable_principal(self, name: str, disabled: bool = True) -> None:
        """Disable (or re-enable) a principal: its tokens stop working."""
        target = self.registry.get(name)
        self._require_tenant_admin("principal", target.tenant, f"principal:{name}")
        self.registry.set_disabled(name, disabled)
        self.record("principal.disable" if disabled else "principal.enable", "*", obj=f"principal:{name}")

    def issue_token(self, principal: str, *, scopes: tuple[str, ...] = ("read",),
                    ttl_s: float | None = 30 * 86400.0) -> IssuedToken:
        """Issue a token (tenant admin, or a principal for itself with no wider scopes than its own token)."""
        target = self.registry.get(principal)
        me = self.principal
        if me.name != principal or (me.scopes is not None and not set(scopes) <= me.scopes):
            self._require_tenant_admin("token", target.tenant, f"principal:{principal}")
        issued = self.registry.issue(principal, scopes=scopes, ttl_s=ttl_s)
        self.record("token.issue", "*", obj=f"token:{issued.token_id}",
                    details={"principal": principal, "scopes": list(issued.scopes), "expires_at": issued.expires_at})
        return issued

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token (its owner or a tenant admin)."""
        owners = [tok for tok in self.registry.tokens() if tok["id"] == token_id]
        owner = str(owners[0]["principal"]) if owners else ""
        if owner != self.principal.name:
            tenant = self.registry.get(owner).tenant if owner else self.principal.tenant
            self._require_tenant_admin("token", tenant, f"token:{token_id}")
        self.registry.revoke(token_id)
        self.record("token.revoke", "*", obj=f"token:{token_id}", details={"principal": owner})

    def grant(self, principal: str, role: Role, *, dataset: str | None = None,
              tenant: str | None = None) -> Grant:
        """Give a role (the caller must be admin of the scope; refusals are audited)."""
        scope = f"dataset:{dataset}" if dataset else f"tenant:{tenant}"
        try:
            grant = self.roles.grant(self.principal, principal, role, dataset=dataset, tenant=tenant)
        except AuthorizationError as exc:
            self.audit.append(principal=self.principal.name, action="grant", dataset=dataset or "*",
                              object=scope, outcome="denied", details={"reason": str(exc), "role": role,
                                                                       "to": principal})
            raise
        self.record("grant", dataset or "*", obj=scope, details={"role": role, "to": principal})
        return grant

    def revoke_role(self, principal: str, *, dataset: str | None = None, tenant: str | None = None) -> None:
        """Remove a role (admin of the scope only)."""
        scope = f"dataset:{dataset}" if dataset else f"tenant:{tenant}"
        try:
            self.roles.revoke(self.principal, principal, dataset=dataset, tenant=tenant)
        except AuthorizationError as exc:
            self.audit.append(principal=self.principal.name, action="revoke", dataset=dataset or "*",
                              object=scope, outcome="denied", details={"reason": str(exc), "from": principal})
            raise
        self.record("revoke", dataset or "*", obj=scope, details={"from": principal})

    def add_rule(self, tag_pattern: str, clearance: str) -> None:
        """Add an attribute rule (tag pattern -> clearance)."""
        self.roles.add_rule(self.principal, tag_pattern, clearance)
        self.record("rule.add", "*", obj=f"rule:{tag_pattern}", details={"clearance": clearance})

    def set_policy(self, dataset: str, policy: Policy) -> Policy:
        """Replace a dataset's policy (admin of the dataset)."""
        self._admin("policy", dataset, f"policy:{dataset}", {"policy": policy.to_dict()})
        return self.policies.set(dataset, policy)

    def propagate(self, target: str, sources: list[str]) -> Policy:
        """Merge the policies of ``sources`` into ``target``'s (most restrictive wins); audited."""
        own = self.policies.get(target)
        derived = merge({s: self.policies.get(s) for s in sources if s != target}, own)
        if derived != own:
            self.policies.set(target, derived)
            self.record("policy.propagate", target, obj=f"policy:{target}",
                        details={"sources": sorted(sources), "conflicts": list(derived.conflicts)})
            for conflict in derived.conflicts:
                log.warning("policy of %s: %s", target, conflict)
        return derived

    def rotate_keys(self, tenant: str | None = None, *, retire_old: bool = False) -> RotationReport:
        """Rotate a tenant's master key and re-wrap its data keys (tenant admin)."""
        tenant = tenant or self.principal.tenant
        self._require_tenant_admin("key", tenant, f"tenant:{tenant}")
        report = self.keys.rotate(tenant, retire_old=retire_old)
        self.record("key.rotate", "*", obj=f"tenant:{tenant}",
                    details={"new_key_id": report.new_key_id, "rewrapped": report.rewrapped,
                             "retired": list(report.retired)})
        return report

    def _require_tenant_admin(self, action: str, tenant: str, obj: str) -> None:
        principal = self.principal
        if principal.is_local_admin:
            return
        ok = (principal.tenant == tenant and self.roles.role_of(principal, "*", tenant) == "admin"
              and (principal.scopes is None or "admin" in principal.scopes))
        if not ok:
            exc = AuthorizationError(f"{principal.name} may not manage {obj}: it needs the admin role on "
                                     f"tenant {tenant}", hint="ask a tenant admin")
            self.audit.append(principal=principal.name, action=action, dataset="*", object=obj,
                              outcome="denied", details={"reason": str(exc)})
            raise exc
