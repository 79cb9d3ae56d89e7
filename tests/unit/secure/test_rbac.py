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
