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
    check(run_train(root / "home", SCRIPT, "--nproc-per-node", "2", str(out)))
    return dict(json.loads(out.read_text()))


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
