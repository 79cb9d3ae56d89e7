"""Audit checkpoints against a trusted key, checked by default, and truncation after the last checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from granary.catalog import open_catalog
from granary.errors import ConfigError
from granary.secure.audit import AuditLog
from granary.secure.checkpoint import make_checkpoint, message, public_hex, sign_bytes
from granary.secure.errors import CryptoError
from granary.secure.settings import SecureSettings


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("GRANARY_HOME", str(home))
    monkeypatch.setenv("GRANARY_SECURE", "1")
    for var in ("GRANARY_AUTH", "GRANARY_TOKEN", "GRANARY_CATALOG_URL", "GRANARY_STORAGE_URL", "GRANARY_ENCRYPT",
                "GRANARY_AUDIT_PUBLIC_KEY", "GRANARY_AUDIT_PUBLIC_KEY_FILE", "GRANARY_AUDIT_CHECKPOINTS"):
        monkeypatch.delenv(var, raising=False)
    return home


def _run(*args: str) -> tuple[int, str]:
    from granary.cli.main import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _log(home: Path) -> AuditLog:
    return AuditLog(open_catalog(f"sqlite:///{home / 'catalog.db'}"))


def _fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append(principal="alice", action="read", dataset="web", object=f"web@{i}")


def _delete_from(log: AuditLog, seq: int) -> None:
    with log.catalog.write() as conn:
        conn.execute(sa.text("DELETE FROM secure_audit WHERE seq >= :s"), {"s": seq})


def test_plain_verify_checks_catalog_checkpoints_and_catches_truncation(cli_env: Path) -> None:
    assert _run("audit", "checkpoint")[0] == 0  # the chain's first records: the checkpoint pins them
    log = _log(cli_env)
    _fill(log, 10)
    code, out = _run("audit", "checkpoint", "--json")
    assert code == 0, out
    pinned = json.loads(out)["seq"]
    code, out = _run("audit", "verify", "--json")
    assert code == 0, out
    assert json.loads(out)["last_checkpoint"] == pinned
    _delete_from(log, pinned - 3)  # truncate the tail below the last checkpoint
    code, out = _run("audit", "verify")
    assert code == 1 and "truncated" in out, out
    code, out = _run("audit", "checkpoint")  # an admin fooled into checkpointing the truncated log: refused
    assert code == 1 and "truncated" in out, out
    _delete_from(log, 1)  # delete every record
    code, out = _run("audit", "verify")
    assert code == 1 and "truncated" in out, out


def test_records_after_the_last_checkpoint_are_a_warning(cli_env: Path) -> None:
    assert _run("audit", "checkpoint")[0] == 0
    _fill(_log(cli_env), 5)
    code, out = _run("audit", "verify", "--json")
    report = json.loads(out)
    assert code == 0 and report["unpinned"] >= 5
    assert any("after the last checkpoint" in w for w in report["warnings"])
    code, out = _run("audit", "verify")
    assert code == 0 and "after the last checkpoint" in out


def test_a_checkpoint_signed_with_an_attackers_key_is_refused(cli_env: Path, tmp_path: Path) -> None:
    assert _run("audit", "checkpoint")[0] == 0
    log = _log(cli_env)
    _fill(log, 6)
    # the attacker truncates the log and plants a checkpoint of the truncated head, signed with their own key
    _delete_from(log, 4)
    seq, head = log.head()
    attacker = Ed25519PrivateKey.generate()
    at = 1.0e9
    pub, sig = sign_bytes(attacker, message(seq + 100, head, at))
    with log.catalog.write() as conn:
        conn.execute(sa.text("DELETE FROM secure_audit_checkpoints"))
        conn.execute(sa.text("INSERT INTO secure_audit_checkpoints (seq, hash, at, public_key, signature) "
                             "VALUES (:s, :h, :a, :p, :g)"), {"s": seq + 100, "h": head, "a": at, "p": pub,
                                                               "g": sig})
    code, out = _run("audit", "verify")
    assert code == 1 and "not the trusted key" in out, out


def test_trusted_key_from_the_environment_or_a_file(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pub = public_hex(key)
    assert SecureSettings.from_env(tmp_path, {"GRANARY_AUDIT_PUBLIC_KEY": pub}).audit_public_key == pub
    (tmp_path / "audit.pub").write_text(pub.upper() + "\n")
    env = {"GRANARY_AUDIT_PUBLIC_KEY_FILE": str(tmp_path / "audit.pub")}
    assert SecureSettings.from_env(tmp_path, env).audit_public_key == pub
    with pytest.raises(ConfigError, match="64 hex"):
        SecureSettings.from_env(tmp_path, {"GRANARY_AUDIT_PUBLIC_KEY": "abc"})


def test_verify_with_a_trusted_key_in_the_library(tmp_path: Path) -> None:
    log = AuditLog(open_catalog(f"sqlite:///{tmp_path / 'c.db'}"))
    _fill(log, 4)
    mine, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    cp = make_checkpoint(log, mine)
    assert log.verify(checkpoints=[cp], trusted_key=public_hex(mine)).ok
    forged = make_checkpoint(log, theirs)
    with pytest.raises(CryptoError, match="not the trusted key"):
        log.verify(checkpoints=[forged], trusted_key=public_hex(mine))
    with pytest.raises(CryptoError, match="bad signature"):  # a checkpoint altered after signing
        log.verify(checkpoints=[cp, replace(cp, hash="0" * 64)], trusted_key=public_hex(mine))
