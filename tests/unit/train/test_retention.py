"""Checkpoint retention: keep_last / keep_every through the store (retire, then gc), resume after it, and the
checkpoints a tag or a registered model's lineage needs are never collected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from granary.errors import ExpiredVersionError, StoreError
from granary.train.retention import Checkpoint, apply_retention, live_checkpoints, select
from tests.integration.train.helpers import final_state, losses
from tests.unit.train.test_trainer import _store, recipe

torch = pytest.importorskip("torch")


def test_select_keeps_the_newest_and_every_kth() -> None:
    ckpts = [Checkpoint(f"v{s}", s, float(s)) for s in range(2, 21, 2)]
    kept, dropped = select(ckpts, keep_last=2, keep_every=8)
    assert [c.step for c in kept] == [20, 18, 16, 8] and [c.step for c in dropped] == [14, 12, 10, 6, 4, 2]
    assert select(ckpts, keep_last=0)[1] == []  # off: every checkpoint kept
    assert [c.step for c in select(ckpts, keep_last=3)[0]] == [20, 18, 16]


def test_retention_gc_and_resume(home: Path, tmp_path: Path) -> None:
    """every 2, keep_last 2, keep_every 4 over 12 steps: steps 4, 8, 10, 12 stay; 2 and 6 are retired and their
    objects freed by the store's gc; a longer run then resumes from 12 and equals an uninterrupted run."""
    from granary.train import fit

    constant = {"schedule": "constant", "lr": 0.01}
    ret = {"every": 2, "keep_last": 2, "keep_every": 4}
    fit(recipe(tmp_path, "ret", steps=12, optim=constant, checkpoint=ret))
    store = _store(home)
    assert [c.step for c in live_checkpoints(store, "ret-ckpt")] == [12, 10, 8, 4]
    states = {v.id: v.state for v in store.versions("ret-ckpt")}
    assert sorted(states.values()) == ["deleted"] * 2 + ["live"] * 4
    dropped = [v for v in store.versions("ret-ckpt") if v.state == "deleted"]
    with pytest.raises(ExpiredVersionError):
        store.open_version(dropped[0].ref)
    kept_keys = {e.key for c in live_checkpoints(store, "ret-ckpt")
                 for e in store.open_version(f"ret-ckpt@{c.id}").shards}
    dropped_keys = {e.key for v in dropped for e in store._manifest(v).shards} - kept_keys
    assert dropped_keys and all(store.objects.exists(k) for k in dropped_keys)
    report = store.gc(grace_s=0)
    assert dropped_keys <= set(report.deleted) and not kept_keys & set(report.deleted)
    assert not any(store.objects.exists(k) for k in dropped_keys)
    assert store.verify("ret-ckpt").ok
    more = fit(recipe(tmp_path, "ret", steps=16, optim=constant, checkpoint=ret))
    assert more.resumed_from == 12 and more.steps == 16
    fit(recipe(tmp_path, "plain", steps=16, optim=constant, checkpoint={"every": 2}))
    assert losses(tmp_path / "ret")[0] == losses(tmp_path / "plain")[0]
    a, b = final_state(home, "ret-ckpt"), final_state(home, "plain-ckpt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [c.step for c in live_checkpoints(store, "ret-ckpt")] == [16, 14, 12, 8, 4]


def test_a_tagged_or_registered_checkpoint_is_never_collected(home: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from granary.cli.main import app
    from granary.models.registry import Registry
    from granary.train import fit

    fit(recipe(tmp_path, "keep", steps=8, checkpoint={"every": 2}))
    store = _store(home)
    by_step = {c.step: c.id for c in live_checkpoints(store, "keep-ckpt")}
    assert sorted(by_step) == [2, 4, 6, 8]
    mv = Registry(store).register(f"keep-ckpt@{by_step[2]}", "kept-model")
    store.tag("keep-ckpt", "best", ref=f"keep-ckpt@{by_step[4]}")
    runner = CliRunner()
    dry = runner.invoke(app, ["prune-checkpoints", "keep-ckpt", "--keep-last", "1", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.output)
    assert plan["retired_steps"] == [6] and plan["kept_steps"] == [2, 4, 8]
    assert plan["protected"] == {"step 2": f"lineage of model.kept-model@{mv.store_version[:16]}",
                                 "step 4": "head of tag best"}
    assert [c.step for c in live_checkpoints(store, "keep-ckpt")] == [8, 6, 4, 2]  # dry run: nothing moved
    monkeypatch.setenv("GRANARY_GC_GRACE_S", "0")  # the objects were just written
    done = runner.invoke(app, ["prune-checkpoints", "keep-ckpt", "--keep-last", "1", "--gc", "--json"])
    assert done.exit_code == 0, done.output
    out = json.loads(done.output)
    assert out["retired_steps"] == [6] and out["gc"]["deleted"] > 0
    assert [c.step for c in live_checkpoints(store, "keep-ckpt")] == [8, 4, 2]
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    assert Registry(store).load("kept-model@1")(x).shape == (2, 16, 256)  # its files and lineage still read
    from granary.models.artifact import checkpoint_model

    assert checkpoint_model(store, f"keep-ckpt@{by_step[2]}")[0](x).shape == (2, 16, 256)
    with pytest.raises(StoreError, match="only checkpoint versions"):
        store.retire("tiny-tok", [store.resolve("tiny-tok").id], reason="test")
    assert apply_retention(store, "keep-ckpt", keep_last=1)["retired"] == []  # nothing more to retire


def test_bad_retention_fields_are_named(tmp_path: Path) -> None:
    from granary.errors import TrainError

    with pytest.raises(TrainError, match=r"checkpoint\.keep_last"):
        recipe(tmp_path, "bad", checkpoint={"keep_last": -1})


def test_retire_is_authorised_and_audited(home: Path, tmp_path: Path) -> None:
    from granary.secure.rbac import required_role
    from granary.store.hooks import NullHooks
    from granary.train import fit

    calls: list[tuple[str, str, dict | None]] = []

    class Recording(NullHooks):
        def authorize(self, action: str, dataset: str, *, purpose: str | None = None) -> None:
            calls.append(("authorize", action, None))

        def record(self, action: str, dataset: str, *, version: str | None = None, outcome: str = "ok",
                   details: dict | None = None) -> None:
            calls.append(("record", action, details))

    fit(recipe(tmp_path, "aud", steps=4, checkpoint={"every": 2}))
    store = _store(home)
    store.hooks = Recording()
    out = apply_retention(store, "aud-ckpt", keep_last=1)
    assert out["retired_steps"] == [2]
    retire_calls = [c for c in calls if c[1] == "retire"]
    assert [c[0] for c in retire_calls] == ["authorize", "record"]
    assert retire_calls[1][2] is not None and retire_calls[1][2]["versions"] == out["retired"]
    assert "keep_last=1" in retire_calls[1][2]["reason"]
    assert required_role("retire") == "writer"  # a run's own token (writer) may apply its retention
