"""Kill a real pipeline process with SIGKILL (twice, in different phases), rerun it: same output as an
uninterrupted run, nothing lost or duplicated, finished tasks are not redone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

from granary.config import Settings
from granary.curate import PipelineSpec, curate
from granary.curate.synth import generate
from granary.store import open_store

SPEC = {"name": "resume", "steps": ["normalize_whitespace", "gopher_quality", "exact_dedup", "minhash_dedup",
                                    "pii"]}
CHILD = """
import sys
from granary.config import Settings
from granary.curate import PipelineSpec, curate
from granary.store import open_store
spec = PipelineSpec.from_dict({spec!r})
store = open_store(Settings.from_env(home=sys.argv[1], shard_size_bytes=16384, row_group_bytes=4096))
curate(store, "web@main", spec, "out", executor="inline", report=False)
"""


def _kill_when(proc: subprocess.Popen[bytes], pattern: str, home: Path, count: int, timeout_s: float = 180) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # ended before it could be killed: show why
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"the curate child exited with {proc.returncode} before {pattern}:\n{err[-6000:]}")
        if len(list((home / "work").glob(pattern))) >= count:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    raise AssertionError(f"no progress to {pattern} in {timeout_s}s")


def test_sigkill_then_resume_gives_identical_output(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings.from_env(home=home, shard_size_bytes=16384, row_group_bytes=4096)
    store = open_store(settings)
    docs, _ = generate(700, seed=21)
    store.create_dataset("web")
    store.commit_table("web", pa.Table.from_pylist(docs))
    n_shards = len(store.manifest("web@main").shards)
    assert n_shards >= 20
    spec = PipelineSpec.from_dict(SPEC)
    reference, _ = curate(store, "web@main", spec, "reference", executor="inline", report=False)

    script = CHILD.format(spec=SPEC)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    kills = []
    # kill 1: in the middle of the first segment; kill 2: after the exact-dedup global phase, mid segment 2
    for pattern, count in (("*/seg0/done-*.json", n_shards // 2), ("*/seg1/done-*.json", n_shards // 3)):
        proc = subprocess.Popen([sys.executable, "-c", script, str(home)], env=env, stderr=subprocess.PIPE)
        kills.append(_kill_when(proc, pattern, home, count))
        assert proc.returncode == -signal.SIGKILL
    assert kills == [True, True]
    run_dirs = list((home / "work").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "seg0" / "global" / "decided.json").exists()

    resumed, _ = curate(store, "web@main", spec, "out", executor="inline", report=False)
    assert resumed.resumed_tasks >= n_shards + n_shards // 3
    assert resumed.run_id == run_dirs[0].name
    assert resumed.resumed and not reference.resumed  # the CLI says "resumed the interrupted run ..."
    ref_table, out_table = store.read_table("reference@main"), store.read_table("out@main")
    assert out_table.equals(ref_table)
    ref_rej = store.read_side_table("reference@main", "rejected")
    out_rej = store.read_side_table("out@main", "rejected")
    assert out_rej.equals(ref_rej)
    ids = out_table.column("id").to_pylist() + out_rej.column("id").to_pylist()
    assert sorted(ids) == sorted(d["id"] for d in docs)  # no document lost or duplicated
    assert resumed.rows_out == reference.rows_out
    assert not run_dirs[0].exists()  # the work directory is removed after a successful commit
