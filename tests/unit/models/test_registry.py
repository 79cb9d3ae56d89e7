"""Registry: register from a checkpoint (shapes checked, nothing half-registered), files, aliases, policy, lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from granary.models.errors import ModelNotFoundError, PromotionRefusedError, ShapeMismatchError
from granary.models.registry import Registry
from tests.unit.models.conftest import Trained, train


def test_register_loads_the_same_weights_and_exports_safetensors_and_hf(trained: Trained) -> None:
    from granary.models.artifact import checkpoint_model, from_hf_layout, model_config

    store = trained.store()
    reg = Registry(store)
    mv = reg.register(trained.checkpoint, "reg-a")
    assert (mv.name, mv.version, mv.method) == ("reg-a", 1, "registered")
    original, manifest = checkpoint_model(store, trained.checkpoint)
    loaded = reg.load("reg-a@1")
    x = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded(x), original(x))
    files = {str(e.meta["name"]): e for e in store.open_version(f"model.reg-a@{mv.store_version}").shards}
    assert set(files) == {"model.safetensors", "config.json", "hf/model.safetensors", "hf/config.json"}
    hf_config = json.loads(store.object_bytes(files["hf/config.json"]))
    assert hf_config["model_type"] == "gpt2" and hf_config["n_layer"] == 2 and hf_config["n_embd"] == 32
    from safetensors.torch import load

    hf = load(store.object_bytes(files["hf/model.safetensors"]))
    assert hf["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, 3 * out)
    back = from_hf_layout(hf, model_config(mv.facts["arch"]))
    for k, v in original.state_dict().items():
        assert torch.equal(back[k], v), k
    assert mv.facts["checkpoint"]["version"] == manifest.version_id
    assert mv.facts["data"]["versions"] == [store.resolve(trained.data).id]


def test_shape_mismatch_is_refused_and_nothing_is_registered(trained: Trained) -> None:
    store = trained.store()
    reg = Registry(store)
    arch = {"vocab_size": 64, "d_model": 48, "n_layers": 3, "n_heads": 2, "context": 16}
    with pytest.raises(ShapeMismatchError) as info:
        reg.register(trained.checkpoint, "bad-shape", arch=arch)
    assert "tok_emb.weight: checkpoint [64, 32], architecture [64, 48]" in str(info.value)
    assert "blocks.2.ln1.weight: missing from the checkpoint" in info.value.problems
    assert reg.versions("bad-shape") == []
    assert all(d.name != "model.bad-shape" for d in store.datasets())


def test_versions_number_up_and_refs_resolve(trained: Trained) -> None:
    reg = Registry(trained.store())
    a = reg.register(trained.checkpoint, "reg-b")
    b = reg.register(trained.checkpoint, "reg-b")
    assert (a.version, b.version) == (1, 2)
    assert reg.get("reg-b").version == 2
    reg.set_alias("reg-b@1", "staging")
    assert reg.get("reg-b@staging").version == 1
    with pytest.raises(ModelNotFoundError, match="no alias 'production'"):
        reg.get("reg-b@production")
    with pytest.raises(ModelNotFoundError):
        reg.get("reg-b@9")


def test_every_alias_move_is_audited(trained: Trained) -> None:
    reg = Registry(trained.store())
    reg.register(trained.checkpoint, "reg-c")
    reg.register(trained.checkpoint, "reg-c")
    reg.set_alias("reg-c@1", "production")
    reg.set_alias("reg-c@2", "production")
    moves = [e for e in reg.events("reg-c") if e["action"] == "alias"]
    assert [(m["details"]["from"], m["details"]["to"]) for m in moves] == [(None, 1), (1, 2)]
    assert all(m["actor"].startswith("local:") for m in moves)
    assert reg.aliases("reg-c") == {"production": 2}


def test_research_only_data_cannot_reach_production_without_an_audited_override(tmp_path: Path) -> None:
    from granary.secure.policy import Policy, PolicyBook

    tr = train(tmp_path / "home", "research")
    store = tr.store()
    PolicyBook(store.catalog).set(tr.data, Policy(purposes=frozenset({"research"}), licenses=frozenset({"MIT"})))
    reg = Registry(store)
    reg.register(tr.checkpoint, "res", purpose="research")
    inherited = PolicyBook(store.catalog).get("model.res")  # the model's files carry their data's restrictions
    assert inherited.purposes == frozenset({"research"}) and inherited.licenses == frozenset({"MIT"})
    reg.set_alias("res@1", "staging")  # only production is guarded
    with pytest.raises(PromotionRefusedError, match=r"may only be used for \['research'\]"):
        reg.set_alias("res@1", "production")
    assert "production" not in reg.aliases("res")
    reg.set_alias("res@1", "production", override="approved by the review board, ticket 42")
    actions = [(e["action"], e["details"].get("alias")) for e in reg.events("res")]
    assert ("alias-refused", "production") in actions and ("override", "production") in actions
    assert reg.aliases("res")["production"] == 1


def test_lineage_reaches_the_raw_tokens_version(trained: Trained) -> None:
    from granary.models.lineage import data_datasets, lineage_graph

    store = trained.store()
    reg = Registry(store)
    mv = reg.register(trained.checkpoint, "reg-d")
    graph = lineage_graph(store, mv)
    data_id = store.resolve(trained.data).id
    ckpt_id = mv.facts["checkpoint"]["version"]
    assert [f"model:{mv.ref}", ckpt_id] in graph["edges"] and [ckpt_id, data_id] in graph["edges"]
    assert graph["roots"] == [data_id]
    assert data_datasets(store, mv) == [trained.data]


def test_model_card_is_written_from_facts(trained: Trained) -> None:
    from granary.models.card import model_facts, render_html, render_markdown

    reg = Registry(trained.store())
    mv = reg.register(trained.checkpoint, "reg-e")
    reg.set_alias(mv.ref, "staging")
    facts = model_facts(reg, mv.ref)
    assert facts["tokens_trained"] == mv.facts["data"]["samples"] * 16
    assert facts["aliases"] == ["staging"]
    md = render_markdown(facts)
    assert f"| {trained.data}@{mv.facts['data']['versions'][0][:12]} | 1 |" in md
    assert "Allowed purposes: unrestricted" in md and "Aliases: staging" in md
    page = render_html(facts)
    assert page.startswith("<!doctype html>") and "<h2>Evaluations</h2>" in page


def test_lookups_and_alias_moves_go_through_the_store_gate(trained: Trained) -> None:
    """A view whose principal may not see a model does not list or resolve it, and one that may only read it
    cannot move its aliases (the refusal raises before anything changes); each decision reaches the hooks."""
    from granary.errors import AuthorizationError
    from granary.store.hooks import NullHooks

    store = trained.store()
    reg = Registry(store)
    reg.register(trained.checkpoint, "gate-a")
    reg.register(trained.checkpoint, "gate-b")

    class ReadOnly(NullHooks):
        def __init__(self) -> None:
            self.asked: list[tuple[str, str]] = []

        def authorize(self, action: str, dataset: str, *, purpose: str | None = None) -> None:
            self.asked.append((action, dataset))
            if dataset == "model.gate-b" or action == "write":
                raise AuthorizationError(f"{action} on {dataset} refused")

        def allows(self, action: str, dataset: str) -> bool:
            return dataset != "model.gate-b"

    hooks = ReadOnly()
    store.hooks = hooks
    view = Registry(store)
    assert "gate-a" in view.models() and "gate-b" not in view.models()
    assert view.get("gate-a").version == 1
    with pytest.raises(AuthorizationError):
        view.get("gate-b")
    with pytest.raises(AuthorizationError):
        view.set_alias("gate-a@1", "production")
    assert ("write", "model.gate-a") in hooks.asked
    assert "production" not in reg.aliases("gate-a")
