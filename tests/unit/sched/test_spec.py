"""YAML job specs and checkpoint discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from granary.sched.checkpoint import latest_checkpoint, read_report, report_resumed, save_marker
from granary.sched.errors import InvalidJobError
from granary.sched.executors.base import command_line, job_env
from granary.sched.model import JobSpec
from granary.sched.spec import load_specs


def test_dag_file_loads_in_order(tmp_path: Path) -> None:
    f = tmp_path / "dag.yaml"
    f.write_text("jobs:\n- {name: prep, command: [echo, hi]}\n"
                 "- {name: train, command: 'sleep 1', gpus_per_replica: 2, depends_on: [prep]}\n")
    prep, train = load_specs(f)
    assert prep.command == ("echo", "hi") and train.depends_on == ("prep",) and train.gpus == 2


@pytest.mark.parametrize(("text", "match"), [
    ("name: a\ngpus: 2\n", "'gpus' is not a job field"),
    ("jobs:\n- {name: b, depends_on: [zz]}\n", "not an earlier job"),
    ("name: a\nreplicas: 0\n", "replicas"),
    ("[1, 2", "cannot be read"),
])
def test_bad_specs_name_file_and_field(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(InvalidJobError, match=match) as info:
        load_specs(f)
    assert "bad.yaml" in str(info.value)


def test_latest_complete_checkpoint_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for step in (5, 10, 20):
        (tmp_path / f"step_{step}").mkdir()
    save_marker(tmp_path / "step_5")
    save_marker(tmp_path / "step_10")  # step_20 is incomplete (crashed mid-save)
    assert latest_checkpoint(tmp_path) == (str(tmp_path / "step_10"), 10)
    assert latest_checkpoint(tmp_path / "none") is None
    spec = JobSpec(name="t", command=("python", "train.py"), gpus_per_replica=2, checkpoint_dir=str(tmp_path))
    env = job_env(spec, job_id="j1", attempt=2, replica=0, gpu_ids=(3, 5), report_file=str(tmp_path / "r.json"))
    assert env["CUDA_VISIBLE_DEVICES"] == "3,5" and env["GRANARY_RESUME_STEP"] == "10"
    assert command_line(spec) == "python train.py"
    monkeypatch.setenv("GRANARY_REPORT_FILE", env["GRANARY_REPORT_FILE"])
    report_resumed(10)
    assert read_report(tmp_path / "r.json") == {"resumed_step": 10}


def test_spec_round_trips_through_dicts_with_its_shape() -> None:
    import dataclasses

    spec = JobSpec(name="t", tenant="a", command=["x"], gpus_per_replica=2, replicas=3, node_selector={"gpu": "h100"})
    assert set(spec.to_dict()) == {f.name for f in dataclasses.fields(JobSpec)}  # the cached shape is no field
    again = JobSpec.from_dict(spec.to_dict())
    assert again == spec and again.shape == spec.shape == (2, 1.0, 0, 3, (("gpu", "h100"),))
