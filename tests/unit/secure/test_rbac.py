"""Roles, deny by default, scopes, escalation attempts and attribute rules, through the Guard (audited)."""

from __future__ import annotations

from pathlib import Path

import pytest

from granary.catalog import Catalog
from granary.errors import AuthorizationError
from granary.secure.errors import AuthenticationError, PurposeError
from granary.secure.guard import Guard
from granary.secure.policy import Policy
from granary.secure.settings import SecureSettings
from granary.secure.tokens import Principal


def _guards(tmp_path: Path, catalog: Catalog) -> tuple[Guard, dict[str, Guard]]:
    settings = SecureSettings.from_env(tmp_path, environ={})
    admin = Guard(catalog, settings)
    for name, clearances in (("alice", ("pii",)), ("bob", ()), ("eve", ())):
        admin.add_principal(name, clearances=clearances)
    admin.add_principal("mallory", tenant="acme")
    users = {}
    for name in ("alice", "bob", "eve", "mallory"):
        p = admin.registry.get(name)
        users[name] = Guard(catalog, settings, principal=p)
    return admin, users


def test_deny_by_default_then_roles(tmp_path: Path, catalog: Catalog) -> None:
    admin, u = _guards(tmp_path, catalog)
    with pytest.raises(AuthorizationError, match="needs the reader role and holds none"):
        u["bob"].authorize("read", "web")
    admin.grant("bob", "reader", dataset="web")
    u["bob"].authorize("read", "web")
    with pytest.raises(AuthorizationError, match="writer"):
        u["bob"].authorize("write", "web")
    admin.grant("bob", "writer", tenant="default")
    u["bob"].authorize("write", "other-dataset")
    with pytest.raises(AuthorizationError):
        u["bob"].authorize("gc", "*")
    with pytest.raises(AuthorizationError):
        u["bob"].authorize("unheard-of-action", "web")  # unknown actions need admin
    admin.revoke_role("bob", tenant="default")
    with pytest.raises(AuthorizationError):
        u["bob"].authorize("write", "web")
    denied = admin.audit.query(outcome="denied")
    assert [r.action for r in denied] == ["read", "write", "gc", "unheard-of-action", "write"]
    assert all(r.principal == "bob" for r in denied)


def test_escalation_attempts_are_refused_and_audited(tmp_path: Path, catalog: Catalog) -> None:
    admin, u = _guards(tmp_path, catalog)
    admin.grant("eve", "writer", dataset="web")
    with pytest.raises(AuthorizationError):
        u["eve"].grant("eve", "admin", dataset="web")  # raise own role
    with pytest.raises(AuthorizationError):
        u["eve"].grant("bob", "reader", dataset="web")  # writers cannot grant
    with pytest.raises(AuthorizationError):
        u["eve"].issue_token("alice", scopes=("admin",))  # tokens for others
    with pytest.raises(AuthorizationError):
        u["eve"].add_principal("eve2")
    with pytest.raises(AuthorizationError):
        u["eve"].set_clearances("eve", ("pii",))
    with pytest.raises(AuthorizationError):
        u["eve"].rotate_keys()
    # a tenant admin of acme cannot touch the default tenant's datasets
    admin.grant("mallory", "admin", tenant="acme")
    with pytest.raises(AuthorizationError):
        u["mallory"].grant("mallory", "reader", dataset="web")
    with pytest.raises(AuthorizationError, match="tenant"):
        u["mallory"].authorize("read", "web")
    assert len(admin.audit.query(outcome="denied")) == 8
    assert admin.audit.verify().ok
    # a dataset admin can grant on its dataset
    admin.grant("alice", "admin", dataset="web")
    u["alice"].grant("bob", "reader", dataset="web")
    u["bob"].authorize("read", "web")


def test_token_scopes_cap_roles(tmp_path: Path, catalog: Catalog) -> None:
    admin, _ = _guards(tmp_path, catalog)
    admin.grant("alice", "admin", dataset="web")
    issued = admin.issue_token("alice", scopes=("read",))
    settings = SecureSettings.from_env(tmp_path, environ={"GRANARY_AUTH": "tokens", "GRANARY_TOKEN": issued.secret})
    g = Guard(catalog, settings)
    assert g.principal.name == "alice"
    g.authorize("read", "web")
    with pytest.raises(AuthorizationError, match="scopes"):
        g.authorize("write", "web")
    with pytest.raises(AuthorizationError):
        g.issue_token("alice", scopes=("admin",))  # cannot widen its own token


def test_revocation_reaches_long_running_processes(tmp_path: Path, catalog: Catalog,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import granary.secure.guard as guard_module

    admin, _ = _guards(tmp_path, catalog)
    admin.grant("bob", "reader", dataset="web")
    issued = admin.issue_token("bob")
    g = Guard(catalog, SecureSettings.from_env(tmp_path, environ={"GRANARY_AUTH": "tokens",
                                                                  "GRANARY_TOKEN": issued.secret}))
    g.authorize("read", "web")
    admin.revoke_token(issued.token_id)
    g.authorize("read", "web")  # within REAUTH_S the authenticated principal is reused
    monkeypatch.setattr(guard_module, "REAUTH_S", 0.0)
    with pytest.raises(AuthenticationError, match="revoked"):
        g.authorize("read", "web")


def test_failed_authentication_is_audited(tmp_path: Path, catalog: Catalog) -> None:
    admin, _ = _guards(tmp_path, catalog)
    issued = admin.issue_token("bob")
    admin.revoke_token(issued.token_id)
    g = Guard(catalog, SecureSettings.from_env(tmp_path, environ={"GRANARY_AUTH": "tokens",
                                                                  "GRANARY_TOKEN": issued.secret}))
    with pytest.raises(AuthenticationError, match="revoked"):
        g.authorize("read", "web")
    rec = admin.audit.query(action="authenticate")[-1]
    assert (rec.principal, rec.outcome, rec.object) == ("anonymous", "denied", f"token:{issued.token_id}")
    assert issued.secret not in str(rec.details)  # the secret never lands in the log


def test_attribute_rules_and_purposes(tmp_path: Path, catalog: Catalog) -> None:
    admin, u = _guards(tmp_path, catalog)
    admin.set_policy("raw", Policy(tags=frozenset({"pii:raw"}), purposes=frozenset({"research"})))
    admin.grant("alice", "reader", dataset="raw")
    admin.grant("bob", "reader", dataset="raw")
    with pytest.raises(AuthorizationError, match="clearance"):
        u["bob"].authorize("read", "raw", purpose="research")
    u["alice"].authorize("read", "raw", purpose="research")
    with pytest.raises(PurposeError, match="pretraining"):
        u["alice"].authorize("read", "raw", purpose="pretraining")
    with pytest.raises(PurposeError, match="no purpose"):
        u["alice"].authorize("read", "raw")
    admin.add_rule("license:*nc*", "legal")
    admin.set_policy("nc", Policy(tags=frozenset({"license:cc-by-nc"})))
    admin.grant("alice", "reader", dataset="nc")
    with pytest.raises(AuthorizationError, match="legal"):
        u["alice"].authorize("read", "nc")
    assert {r.action for r in admin.audit.query(outcome="denied")} == {"read"}


def test_local_mode_is_admin_without_setup(tmp_path: Path, catalog: Catalog) -> None:
    g = Guard(catalog, SecureSettings.from_env(tmp_path, environ={}))
    assert g.principal.is_local_admin and g.principal.name.startswith("local:")
    for action in ("read", "write", "gc", "forget", "key"):
        g.authorize(action, "anything")
    assert isinstance(g.principal, Principal)


def test_role_cache_sees_changes_within_cache_s(tmp_path: Path, catalog: Catalog,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import granary.secure.rbac as rbac

    admin, _users = _guards(tmp_path, catalog)
    settings = SecureSettings.from_env(tmp_path, environ={})
    bob = Guard(catalog, settings, principal=admin.registry.get("bob"), cache_s=1.0)
    clock = [1000.0]
    monkeypatch.setattr(rbac.time, "monotonic", lambda: clock[0])
    assert not bob.allows("read", "web")
    admin.grant("bob", "reader", dataset="web")  # through another book: bob's cache still says "none"
    assert not bob.allows("read", "web")
    clock[0] += 1.0  # cache_s later the grant is seen
    assert bob.allows("read", "web") and bob.roles.role_of(bob.principal, "web", "default") == "reader"
    admin.revoke_role("bob", dataset="web")
    clock[0] += 0.5
    assert bob.allows("read", "web")  # remembered for up to cache_s ...
    clock[0] += 0.5
    assert not bob.allows("read", "web")  # ... and no longer
    uncached = Guard(catalog, settings, principal=admin.registry.get("bob"))
    admin.grant("bob", "reader", dataset="web")
    assert uncached.allows("read", "web")  # the default (cache_s=0) reads the catalog every time
    assert bob.bound(principal=admin.registry.get("alice")).roles.cache_s == 1.0  # bound guards keep it


def test_policy_get_many_is_one_query_and_matches_get(tmp_path: Path, catalog: Catalog) -> None:
    import sqlalchemy as sa

    admin, _users = _guards(tmp_path, catalog)
    admin.set_policy("web", Policy(tags=frozenset({"pii:raw"}), purposes=frozenset({"research"})))
    book = Guard(catalog, SecureSettings.from_env(tmp_path, environ={})).policies
    n = [0]

    def count(_conn: object, _cursor: object, statement: str, *_a: object) -> None:
        n[0] += statement.lstrip().upper().startswith("SELECT")  # SQLite's BEGIN is a statement too

    sa.event.listen(catalog.engine, "before_cursor_execute", count)
    try:
        many = book.get_many(["web", "other", "web"])
        assert n[0] == 1
        assert book.get_many(["web", "other"]) == many and n[0] == 1  # remembered
    finally:
        sa.event.remove(catalog.engine, "before_cursor_execute", count)
    assert set(many) == {"web", "other"} and many["web"] == admin.policies.get("web") and many["other"] == Policy()
