"""Derived data inherits its sources' restrictions in every mode; forget follows lineage; verify after forget."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from granary.config import Settings
from granary.secure.errors import PurposeError
from granary.secure.forget import forget
from granary.secure.hooks import SecureHooks
from granary.secure.policy import Policy, PolicyBook
from granary.store import Store
from granary.store.hooks import NullHooks


def _docs(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(start, start + n)],
                     "text": [f"note {i}" for i in range(start, start + n)],
                     "subject_id": [f"s{i % 10}" for i in range(start, start + n)]})


RESTRICTED = Policy(licenses=frozenset({"CC-BY-NC-4.0"}), purposes=frozenset({"research"}),
                    consent=frozenset({"consent"}), retention_days=30.0)


def _derive(store: Store, source: str, target: str) -> None:
    """A transform: read the source, commit a filtered copy with lineage naming the source version."""
    version = store.resolve(source)
    table = store.read_table(version)
    store.create_dataset(target, exist_ok=True)
    store.commit_table(target, table.slice(0, table.num_rows // 2), message="derived",
                       lineage={"command": "transform", "inputs": [version.id]})


def _check_inherited(policy: Policy) -> None:
    assert "CC-BY-NC-4.0" in policy.licenses
    assert policy.purposes is not None and policy.purposes <= {"research"}
    assert "consent" in policy.consent and policy.retention_days == 30.0
    assert "web" in policy.sources


def test_derived_dataset_inherits_with_the_security_layer(store: Store, hooks: SecureHooks) -> None:
    store.create_dataset("web")
    store.commit_table("web", _docs(40))
    hooks.guard.set_policy("web", RESTRICTED)
    _derive(store.bind(purpose="research"), "web", "web-clean")
    _check_inherited(hooks.guard.policies.get("web-clean"))
    with pytest.raises(PurposeError):  # the laundering attempt: read the derived data for a forbidden purpose
        store.bind(purpose="advertising").read_table("web-clean")


def test_derived_dataset_inherits_in_the_default_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GRANARY_SECURE", "GRANARY_ENCRYPT", "GRANARY_AUTH", "GRANARY_PURPOSE"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings.from_env(environ={}, home=tmp_path / "home")
    plain = Store(settings)
    assert isinstance(plain.hooks, NullHooks)  # nothing to enforce yet
    plain.create_dataset("web")
    plain.commit_table("web", _docs(40))
    PolicyBook(plain.catalog).set("web", RESTRICTED)  # set by another process (`granary policy set`)
    _derive(plain, "web", "web-a")  # a store opened before: inherits through NullHooks.derive
    _check_inherited(PolicyBook(plain.catalog).get("web-a"))
    fresh = Store(settings)  # a store opened now enforces the policy in the default mode
    assert not isinstance(fresh.hooks, NullHooks)
    with pytest.raises(PurposeError):
        fresh.read_table("web-a")
    _derive(fresh.bind(purpose="research"), "web", "web-b")
    _check_inherited(PolicyBook(plain.catalog).get("web-b"))


def test_curate_output_inherits_the_source_restrictions(store: Store, hooks: SecureHooks, settings: Settings,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from granary.curate import PipelineSpec, curate

    store.create_dataset("web")
    store.commit_table("web", _docs(40))
    hooks.guard.set_policy("web", RESTRICTED)
    monkeypatch.setenv("GRANARY_HOME", str(settings.home))
    monkeypatch.setenv("GRANARY_PURPOSE", "research")
    spec = PipelineSpec.from_dict({"name": "p", "steps": [{"step": "exact_dedup"}]})
    curate(store.bind(purpose="research"), "web", spec, "web-curated", executor="local", num_workers=1)
    _check_inherited(hooks.guard.policies.get("web-curated"))


def test_forget_follows_lineage_and_verify_accepts_tags_on_expired_versions(store: Store,
                                                                            hooks: SecureHooks) -> None:
    store.create_dataset("web")
    v1 = store.commit_table("web", _docs(40))
    store.tag("web", "release-1")
    _derive(store, "web", "web-clean")
    _derive(store, "web-clean", "web-small")  # derived from derived data
    receipt = forget(store, hooks.guard, "web", "s2")
    assert receipt.tags == ["web@release-1"]
    assert set(receipt.derived_changed) == {"web-clean", "web-small"}
    assert receipt.derived_changed["web-clean"]["changed"] and receipt.derived_changed["web-clean"]["rows_removed"]
    receipt.verify()
    for name in ("web", "web-clean", "web-small"):
        assert "s2" not in store.read_table(name).column("subject_id").to_pylist()
    report = store.verify()
    assert report.ok, report.problems
    assert any("web@release-1" in note and v1.short_id in note for note in report.expired_refs)


def test_cli_forget_then_verify(store: Store, hooks: SecureHooks, settings: Settings,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from granary.cli.main import app

    store.create_dataset("web")
    store.commit_table("web", _docs(40))
    store.tag("web", "v1")
    _derive(store, "web", "web-clean")
    for var in ("GRANARY_SECURE", "GRANARY_ENCRYPT", "GRANARY_AUTH", "GRANARY_PURPOSE", "GRANARY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GRANARY_HOME", str(settings.home))
    result = CliRunner().invoke(app, ["forget", "web", "--subject", "s1"])
    assert result.exit_code == 0, result.output
    assert "web@v1" in result.output and "web-clean: 2 row(s) removed" in result.output
    result = CliRunner().invoke(app, ["verify"])
    assert result.exit_code == 0, result.output
    assert "expected, not damage" in result.output
