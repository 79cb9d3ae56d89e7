"""The parameter-server mode on 3 real ranks (RPC over TensorPipe): a straggler, a kill -9 and a resume, one job."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.train.helpers import check, make_tokens, run_train, write_recipe

pytest.importorskip("torch")
pytestmark = pytest.mark.slow
BOUND = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """30 versions on 3 ranks, ranks 0 and 1 sleeping 0.1 s and rank 2 (the straggler) 0.3 s per gradient, rank 1
    killed (SIGKILL) after its 4th gradient; torchrun restarts the job once and it resumes from the server's last
    checkpoint. The sleeps make the versions left after the kill take more than a second: with rank 1 killed after
    its 10th gradient and only rank 2 slowed, ranks 0 and 2 once applied the last versions and saved step 30 before
    torchrun stopped them, and the restart had nothing left to resume."""
    from granary.config import Settings
    from granary.store import open_store
    from granary.train.metrics import read_metrics

    root = tmp_path_factory.mktemp("ps")
    home = root / "home"
    make_tokens(home)
    recipe = write_recipe(root / "ps.yaml", "ps", steps=30, every=5, run_dir=root / "ps",
                          parallel={"mode": "param_server", "ps_staleness": BOUND},
                          optim={"lr": 0.01, "warmup_steps": 0, "schedule": "constant"})
    proc = run_train(home, recipe, "--nproc-per-node", "3", "--max-restarts", "1",
                     env={"GRANARY_TRAIN_SLOW": "0:0.1,1:0.1,2:0.3", "GRANARY_TRAIN_CHAOS": "kill:1:4"})
    check(proc)
    store = open_store(Settings.from_env(home=home))
    return {"result": json.loads(proc.stdout.strip().splitlines()[-1]),
            "records": [r for r in read_metrics(root / "ps") if "loss" in r], "store": store,
            "fired": (root / "ps" / "chaos-0.fired").exists()}


def test_learns_within_the_staleness_bound(run: dict[str, Any]) -> None:
    recs = run["records"]
    assert run["result"]["steps"] == 30 and recs[-1]["step"] == 30
    assert all(0 <= s <= BOUND for r in recs for s in r["staleness_all"])  # never older than the bound
    assert any(r["staleness"] > 0 for r in recs)  # three workers: updates do interleave
    first = [r["loss"] for r in recs[:5]]
    last = [r["loss"] for r in recs[-5:]]
    assert sum(last) / 5 < sum(first) / 5 - 0.2, (first, last)
    assert all(r["comm_bytes"] >= 0 for r in recs) and sum(r["comm_bytes"] for r in recs) > 0


def test_the_straggler_does_less(run: dict[str, Any]) -> None:
    last_attempt = [r for r in run["records"] if r["attempt"] == run["records"][-1]["attempt"]]
    by_worker = {int(k): v for k, v in last_attempt[-1]["updates_by_worker"].items()}
    assert by_worker.get(2, 0) < by_worker[0] and by_worker.get(2, 0) < by_worker[1], by_worker


def test_a_killed_rank_resumes_from_the_servers_checkpoint(run: dict[str, Any]) -> None:
    assert run["fired"] and run["result"]["restarts"] == 1
    resumed = run["result"]["resumed_from"]
    assert resumed is not None and resumed % 5 == 0 and 0 < resumed < 30
    again = [r["step"] for r in run["records"] if r["attempt"] == 1]
    assert again == list(range(resumed + 1, 31))  # the restarted attempt goes on from the checkpoint's version
    head = run["store"].manifest(run["store"].resolve("ps-ckpt"))
    assert head.metadata["step"] == 30 and head.metadata["mode"] == "param_server"
    assert head.metadata["loader"]["position"] % 4 == 0  # whole batches handed out
