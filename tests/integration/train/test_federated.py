"""Federated runs with real processes: a coordinator and 3-4 sites, each site its own Granary home.

Covers masked secure aggregation with a site dying mid-round, CKKS-encrypted updates, poisoned and malformed
updates against the norm bound and the median, and sites refusing a run (purpose, exhausted budget), with the
audit records each site keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from granary.config import Settings
from tests.integration.train.helpers import make_tokens

pytest.importorskip("flwr")
pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # each run starts 4-5 Python processes (torch + Flower): 10-40 s on a busy machine

MODEL = {"vocab_size": 256, "d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16}


def _sites(tmp_path: Path, names: str, **kw: Any) -> list[Any]:
    from granary.train.federated import SiteConfig

    sites = []
    for i, n in enumerate(names):
        home = tmp_path / f"site-{n}"
        make_tokens(home, "tok", docs=60, seed=i)
        sites.append(SiteConfig(name=n, dataset="tok", home=str(home), seed=i, **kw))
    return sites


def _cfg(**over: Any) -> Any:
    from granary.train.federated import FedConfig

    base: dict[str, Any] = {"name": "t", "rounds": 2, "min_clients": 2, "expected_clients": 3, "local_steps": 2,
                            "batch_size": 4, "address": "127.0.0.1:0", "model": MODEL,
                            # waits end as soon as the sites are there; the margin is for a busy machine
                            "round_timeout_s": 90}
    return FedConfig.from_dict({**base, **over})


def _guard(home: str) -> Any:
    from granary.catalog import open_catalog
    from granary.secure.guard import Guard
    from granary.secure.settings import SecureSettings

    settings = Settings.from_env(home=Path(home))
    return Guard(open_catalog(settings.catalog_url), SecureSettings.from_env(Path(home)))


def _run(cfg: Any, sites: list[Any], out: Path, **kw: Any) -> Any:
    from granary.train.federated.local import run_local

    run = run_local(cfg, sites, out, timeout_s=240, **kw)
    assert run.result, run.logs["server"][-3000:]
    return run


def test_masked_rounds_survive_a_site_dying_mid_round(tmp_path: Path) -> None:
    sites = _sites(tmp_path, "abc")
    run = _run(_cfg(secure="mask", norm_bound=5.0), sites, tmp_path / "out",
               site_env={"c": {"GRANARY_FED_CHAOS": "exit@2"}})
    assert run.server_code == 0 and run.site_codes == {"a": 0, "b": 0, "c": 17}
    r1, r2 = run.result["rounds"]
    assert (r1["status"], r1["accepted"], r1["dropped"]) == ("ok", 3, [])
    assert (r2["status"], r2["accepted"], r2["dropped"], r2["failures"]) == ("ok", 2, ["c"], 1)
    assert r1["bytes_received"] == 3 * 8 * _params()  # one uint64 word per parameter and site
    # c shared its Shamir shares in round 2, then died: the survivors' shares of its mask key removed its masks
    assert r1["secagg_bytes"] > 0 and r2["secagg_bytes"] > 0
    assert run.result["ok"] and (tmp_path / "out" / "model.pt").exists()
    for site in sites:  # every round is audited where the data lives: version, purpose, what left
        guard = _guard(site.home)
        rounds = guard.audit.query(action="fed.round")
        version = _version(site.home)
        assert [r.details["round"] for r in rounds] == ([1] if site.name == "c" else [1, 2])
        assert all(r.details["version"] == version and r.details["purpose"] == "training"
                   and r.details["sent"] == "model update" and r.details["secure"] == "mask" for r in rounds)
        assert [r.outcome for r in guard.audit.query(action="fed.join")] == ["ok"]
    for name, log in run.logs.items():  # no update values in any log: no arrays printed
        assert "array(" not in log and "ndarray" not in log, name


def _params() -> int:
    from granary.train.model import GPT
    from granary.train.recipe import ModelConfig

    return sum(p.numel() for p in GPT(ModelConfig(**MODEL)).state_dict().values())


def _version(home: str) -> str:
    from granary.store import open_store

    return open_store(Settings.from_env(home=Path(home))).resolve("tok").id


def test_poisoned_and_malformed_updates_are_rejected(tmp_path: Path) -> None:
    sites = _sites(tmp_path, "abcd")
    env = {"c": {"GRANARY_FED_CHAOS": "scale@1"}, "d": {"GRANARY_FED_CHAOS": "shape@1,nan@2"}}
    run = _run(_cfg(aggregation="median", norm_bound=2.0, expected_clients=4, strategy="fedadam", server_lr=0.01),
               sites, tmp_path / "out",
               site_env=env)
    assert run.server_code == 0, run.logs["server"][-3000:]
    r1, r2 = run.result["rounds"]
    assert r1["status"] == "ok" and r1["accepted"] == 2
    assert "above the bound 2" in r1["rejected"]["c"] and "shapes" in r1["rejected"]["d"]
    assert r2["status"] == "ok" and r2["accepted"] == 3 and "non-finite" in r2["rejected"]["d"]
    import torch

    model = torch.load(tmp_path / "out" / "model.pt")
    assert all(torch.isfinite(v).all() for v in model.values())


def test_sites_refuse_a_run_their_purpose_or_budget_does_not_allow(tmp_path: Path) -> None:
    from granary.secure.dp import PrivateStats
    from granary.secure.policy import Policy

    sites = _sites(tmp_path, "abcd")
    for site in sites:
        stats = PrivateStats(_guard(site.home))
        stats.set_budget("tok", epsilon=1.0 if site.name == "c" else 10.0, delta=1e-4)
    _guard(sites[3].home).set_policy("tok", Policy(purposes=frozenset({"evaluation"})))
    cfg = _cfg(rounds=1, dp_epsilon=4.0, norm_bound=1.0, expected_clients=4,
               strategy="fedprox", proximal_mu=0.01, publish="fed-model")
    run = _run(cfg, sites, tmp_path / "out")  # the coordinator's store: this test's GRANARY_HOME
    assert run.server_code == 0 and run.site_codes == {"a": 0, "b": 0, "c": 3, "d": 3}
    assert "budget of tok exhausted" in run.result["refused"]["c"]
    assert "may not be read for 'training'" in run.result["refused"]["d"]
    (r1,) = run.result["rounds"]
    assert r1["status"] == "ok" and r1["accepted"] == 2
    assert 3.9 <= run.result["dp"]["epsilon"] <= 4.0
    for site in sites:
        guard = _guard(site.home)
        ledger = PrivateStats(guard).ledger("tok")
        joined = guard.audit.query(action="fed.join")
        if site.name in "ab":
            assert [(e["mechanism"], e["epsilon"]) for e in ledger] == [("fed-dp", 4.0)]
            assert [j.outcome for j in joined] == ["ok"] and len(guard.audit.query(action="fed.round")) == 1
        else:
            assert ledger == [] and [j.outcome for j in joined] == ["denied"]
            assert guard.audit.query(action="fed.round") == []  # nothing left the site
    _check_published_lineage(run.result, sites)


def _check_published_lineage(result: dict[str, Any], sites: list[Any]) -> None:
    """The model is a checkpoint version whose lineage names the sites, their versions and the budget spent."""
    import json

    from typer.testing import CliRunner

    from granary.cli.main import app

    assert result["published"]["dataset"] == "fed-model"
    out = CliRunner().invoke(app, ["lineage", "fed-model", "--json"])
    assert out.exit_code == 0, out.output
    lin = json.loads(out.output)
    assert lin == result["lineage"] and lin["kind"] == "federated" and lin["step"] == 1
    assert [(s["site"], s["version"], s["rounds"], s["charged_epsilon"]) for s in lin["sites"]] == \
        [(s.name, _version(s.home), [1], 4.0) for s in sites[:2]]
    assert lin["data"]["purpose"] == "training" and set(lin["refused"]) == {"c", "d"}
    dp = lin["privacy"]
    assert dp["mechanism"] == "fed-client-dp" and 3.9 <= dp["epsilon"] <= 4.0 and dp["delta"] == 1e-5
    assert dp["charged"] == {"a": {"dataset": "tok", "epsilon": 4.0, "delta": 1e-5},
                             "b": {"dataset": "tok", "epsilon": 4.0, "delta": 1e-5}}
    shown = CliRunner().invoke(app, ["lineage", "fed-model"])
    assert shown.exit_code == 0 and "epsilon charged" in shown.output and "fed-client-dp" not in shown.output
    assert "epsilon 3.9" in shown.output or "epsilon 4.000" in shown.output
    refused = CliRunner().invoke(app, ["lineage", "fed-model", "--samples"])
    assert refused.exit_code != 0 and "never left" in refused.output
    show = CliRunner().invoke(app, ["show", "fed-model", "--json"])
    assert show.exit_code == 0, show.output
    assert json.loads(show.output)["metadata"]["privacy"] == dp


def test_ckks_rounds_equal_plain_rounds(tmp_path: Path) -> None:
    pytest.importorskip("tenseal")
    from granary.secure import he

    secret = he.new_context()
    (tmp_path / "k.ctx").write_bytes(secret)
    (tmp_path / "k.pub").write_bytes(he.public_context(secret))
    sites = _sites(tmp_path, "abc", he_context=str(tmp_path / "k.ctx"))
    enc = _run(_cfg(secure="ckks", rounds=1), sites, tmp_path / "enc", he_public=str(tmp_path / "k.pub"))
    plain = _run(_cfg(rounds=1), _sites(tmp_path / "p", "abc"), tmp_path / "plain")
    assert enc.server_code == 0 and plain.server_code == 0
    assert enc.result["rounds"][0]["accepted"] == 3
    from granary.store import open_store

    manifests = [open_store(Settings.from_env(home=Path(s.home))).manifest("tok") for s in sites]
    stats = enc.result["site_stats"]  # summed under CKKS; each site audited what it sent
    assert stats["documents"] == sum(m.num_rows for m in manifests) == 180
    assert stats["tokens"] == sum(m.num_tokens for m in manifests) and stats["samples"] > 0
    from granary.store.formats.tokens import TokenShardReader
    from granary.train.federated import wire

    lengths = []  # the documents-by-length histogram, summed under CKKS, against the sites' own shards
    for s in sites:
        store = open_store(Settings.from_env(home=Path(s.home)))
        for e in store.open_version("tok", purpose="training").shards:
            lengths += np.diff(TokenShardReader(store.object_bytes(e)).doc_offsets.astype(np.int64)).tolist()
    hist = {k: stats[k] for k in wire.HIST_KEYS}
    assert hist == wire.length_histogram(lengths) and sum(hist.values()) == 180 and len(set(hist.values())) > 1
    assert all(len(_guard(s.home).audit.query(action="fed.stats")) == 1 for s in sites)
    assert enc.result["rounds"][0]["bytes_received"] > 10 * plain.result["rounds"][0]["bytes_received"]
    import torch

    a, b = torch.load(tmp_path / "enc" / "model.pt"), torch.load(tmp_path / "plain" / "model.pt")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-4  # same data, same seeds: only CKKS rounding differs
    assert np.isfinite(diff)
