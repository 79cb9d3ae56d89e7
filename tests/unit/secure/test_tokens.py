"""Principals and API tokens: shown once, stored hashed, scoped, expiring, revocable."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from granary.catalog import Catalog
from granary.errors import AlreadyExistsError
from granary.secure import tables as t
from granary.secure.errors import AuthenticationError
from granary.secure.tokens import PrincipalRegistry


def test_issue_and_authenticate(catalog: Catalog) -> None:
    reg = PrincipalRegistry(catalog)
    reg.add("alice", clearances=("pii",))
    issued = reg.issue("alice", scopes=("read", "write"), ttl_s=60)
    who = reg.authenticate(issued.secret)
    assert (who.name, who.scopes, who.token_id, who.holds("pii")) == (
        "alice", frozenset({"read", "write"}), issued.token_id, True)
    with catalog.read() as conn:
        stored = conn.execute(sa.select(t.tokens.c.secret_hash)).scalar()
    secret = issued.secret.split("_", 2)[2]  # the secret itself may hold "_"
    assert len(secret) == 43 and secret not in str(stored) and len(str(stored)) == 64  # only a hash is kept
    assert reg.authenticate(f"gry_{issued.token_id}_{secret}").name == "alice"
    assert [tok["id"] for tok in reg.tokens("alice")] == [issued.token_id]


@pytest.mark.parametrize("token, message", [
    (None, "no API token"), ("", "no API token"), ("hello", "malformed"),
    ("gry_0123456789abcdef_" + "A" * 43, "unknown"), ("gry_" + "a" * 1_000_000, "malformed"),
])
def test_bad_tokens(catalog: Catalog, token: str | None, message: str) -> None:
    with pytest.raises(AuthenticationError, match=message):
        PrincipalRegistry(catalog).authenticate(token)


def test_wrong_secret_expired_revoked_disabled(catalog: Catalog) -> None:
    reg = PrincipalRegistry(catalog)
    reg.add("svc", kind="service")
    issued = reg.issue("svc", ttl_s=10)
    forged = issued.secret[:-3] + ("AAA" if not issued.secret.endswith("AAA") else "BBB")
    with pytest.raises(AuthenticationError, match="unknown"):
        reg.authenticate(forged)
    with pytest.raises(AuthenticationError, match="expired"):
        reg.authenticate(issued.secret, now=time.time() + 11)
    reg.set_disabled("svc", True)
    with pytest.raises(AuthenticationError, match="disabled"):
        reg.authenticate(issued.secret)
    reg.set_disabled("svc", False)
    reg.revoke(issued.token_id)
    with pytest.raises(AuthenticationError, match="revoked"):
        reg.authenticate(issued.secret)


def test_validation(catalog: Catalog) -> None:
    reg = PrincipalRegistry(catalog)
    reg.add("bob")
    with pytest.raises(AlreadyExistsError):
        reg.add("bob")
    for bad in ("../root", "", "a b", "x" * 200):
        with pytest.raises(ValueError):
            reg.add(bad)
    with pytest.raises(ValueError, match="scopes"):
        reg.issue("bob", scopes=("root",))
    with pytest.raises(ValueError, match="lifetime"):
        reg.issue("bob", ttl_s=10 * 365 * 86400.0)
    with pytest.raises(ValueError, match="clearance"):
        reg.add("carol", clearances=("PII!",))


def test_a_token_without_a_lifetime_expires_after_366_days(catalog: Catalog) -> None:
    import time

    reg = PrincipalRegistry(catalog)
    reg.add("bot", kind="service")
    before = time.time()
    issued = reg.issue("bot", ttl_s=None)
    assert issued.expires_at is not None
    assert before + 366 * 86400 - 5 <= issued.expires_at <= time.time() + 366 * 86400
    with pytest.raises(AuthenticationError, match="expired"):
        reg.authenticate(issued.secret, now=issued.expires_at + 1)
