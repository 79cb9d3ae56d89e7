"""FSDP2 x tensor parallel on a 2-D (dp=2, tp=2) device mesh: 4 real gloo ranks on CPU, checkpoint and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.integration.train.helpers import check, final_state, make_tokens, run_train

pytest.importorskip("torch")
pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("mesh_script.py")


def test_fsdp_x_tp_trains_checkpoints_and_resumes(tmp_path: Path) -> None:
    make_tokens(tmp_path / "home")
    out = tmp_path / "out.json"
    check(run_train(tmp_path / "home", SCRIPT, "--nproc-per-node", "4", str(out), timeout=400))
    s = json.loads(out.read_text())
    assert s["4"] == {"steps": 4, "resumed_from": None} and s["6"] == {"steps": 6, "resumed_from": 4}
    assert len(s["losses"]) == 6 and all(math.isfinite(x) for x in s["losses"] + s["grad_norms"])
    state = final_state(tmp_path / "home", "mesh-ckpt")  # the plain model's names and full shapes
    assert state["step"] == 6 and state["model"]["blocks.0.attn.wq.weight"].shape == (16, 16)
    assert state["metadata"]["loader"]["world_size"] == 2  # two replicas read data; each TP pair shares one
