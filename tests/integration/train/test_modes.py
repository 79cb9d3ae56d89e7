"""Every parallel mode on 2 real gloo ranks, in one torchrun job running a user script (`granary train X.py`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.integration.train.helpers import check, make_tokens, run_train

pytest.importorskip("torch")
pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("modes_script.py")


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("modes")
    make_tokens(root / "home")
    out = root / "out.json"
    # an elastic change: the first 2 steps of run "elastic" at world size 1, here; the rest at 2 ranks
    from granary.config import Settings
    from granary.store import open_store
    from granary.train import fit
    from tests.integration.train.modes_script import recipe_for

    store = open_store(Settings.from_env(home=root / "home"))
    fit(recipe_for("elastic", root, steps=2, mode="ddp"), store=store)
    check(run_train(root / "home", SCRIPT, "--nproc-per-node", "2", str(out)))
    return {**json.loads(out.read_text()), "store": store}


def test_ddp_learns_and_counts_bytes(summary: dict[str, Any]) -> None:
    ddp = summary["ddp"]
    assert ddp["steps"] == 4 and len(ddp["losses"]) == 4 and all(math.isfinite(x) for x in ddp["losses"])
    full = ddp["bytes"][0]
    assert full > 0 and set(ddp["bytes"]) == {full}  # every step all-reduces every fp32 gradient once
    assert set(summary["ddp_fp16"]["bytes"]) == {full // 2}  # fp16 compression halves it


def test_powersgd_sends_fewer_bytes_after_warmup(summary: dict[str, Any]) -> None:
    full = summary["ddp"]["bytes"][0]
    psgd = summary["powersgd"]["bytes"]
    assert psgd[:2] == [full, full]  # plain all-reduce for the first 2 iterations (start_powerSGD_iter)
    assert all(0 < b < full / 2 for b in psgd[2:]), psgd


def test_fsdp_bf16_checkpoint_resumes(summary: dict[str, Any]) -> None:
    assert summary["fsdp"]["steps"] == 4 and all(math.isfinite(x) for x in summary["fsdp"]["losses"])
    again = summary["fsdp_resumed"]
    assert again["resumed_from"] == 4 and again["steps"] == 6
    assert again["losses"][:4] == summary["fsdp"]["losses"] and len(again["losses"]) == 6  # same run folder


def test_tensor_and_pipeline_parallel_agree(summary: dict[str, Any]) -> None:
    tp, gpipe, one = summary["tp"]["losses"], summary["gpipe"]["losses"], summary["1f1b"]["losses"]
    assert len(tp) == len(gpipe) == len(one) == 4
    assert gpipe == one  # the two schedules compute the same thing
    assert all(abs(a - b) < 1e-4 for a, b in zip(tp, gpipe, strict=True))  # same init, same batches


def test_diloco_communicates_every_h_steps(summary: dict[str, Any]) -> None:
    d = summary["diloco"]
    assert d["bytes"][0] == d["bytes"][2] == 0 and d["bytes"][1] == d["bytes"][3] > 0
    assert all(math.isfinite(x) for x in d["losses"])


def test_asynchronous_diloco_overlaps_its_outer_all_reduce(summary: dict[str, Any]) -> None:
    """H = 2, delay 1: the all-reduce starts at steps 2, 4, 6 (same bytes as synchronous DiLoCo) and lands a
    step later; the first two steps equal synchronous DiLoCo's; step 3 trains on the local model before the merge,
    so it differs (the outer update is one step stale)."""
    a, d = summary["diloco_async"], summary["diloco"]
    assert a["steps"] == 6 and all(math.isfinite(x) for x in a["losses"])
    assert a["bytes"][:4] == d["bytes"] and a["bytes"][5] == d["bytes"][1]
    assert a["losses"][:2] == d["losses"][:2] and a["losses"][2] != d["losses"][2]


def test_elastic_change_from_one_rank_to_two(summary: dict[str, Any]) -> None:
    from granary.train.lineage import checkpoint_lineage, sample_ids

    e = summary["elastic"]
    assert e["resumed_from"] == 2 and e["steps"] == 4 and all(math.isfinite(x) for x in e["losses"])
    lineage = checkpoint_lineage(summary["store"], "elastic-ckpt")
    segments = [(s["first_step"], s["last_step"], s["first_position"], s["samples_per_step"], s["world_size"])
                for s in lineage["segments"]]
    assert segments == [(0, 2, 0, 4, 1), (2, 4, 8, 8, 2)]  # 4 samples a step alone, then 4 per rank
    ids = sample_ids(summary["store"], lineage)
    assert [s for s, _, _ in ids] == [1] * 4 + [2] * 4 + [3] * 8 + [4] * 8
    assert len({(src, i) for _, src, i in ids}) == 24  # one epoch's shuffle: no sample twice


def test_async_checkpoints_on_two_ranks(summary: dict[str, Any]) -> None:
    assert summary["async"]["steps"] == 4 and len(summary["async"]["checkpoints"]) == 2
    store = summary["store"]
    assert [store.manifest(v).metadata["step"] for v in store.log("async-ckpt")] == [4, 2]


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "tp", "diloco"])
def test_fp16_loss_scaling_on_two_ranks(summary: dict[str, Any], mode: str) -> None:
    """fp16 with a dynamic loss scale (an initial 2**21 overflows): the first step is skipped on both ranks (the
    inf flag is summed over the job, DTensor gradients of FSDP2/TP unscaled through their shards), then it learns."""
    run = summary[f"{mode}_amp16"]
    assert run["steps"] == 6 and all(math.isfinite(x) for x in run["losses"])
    assert run["scales"][0] == 2.0**20 and all(s <= 2.0**20 for s in run["scales"])
    assert run["losses"][-1] < run["losses"][0]
