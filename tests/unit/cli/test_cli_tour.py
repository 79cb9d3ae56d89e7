"""What a newcomer meets on the README's tour: --version, readable times, jobs that cannot run say why."""

from __future__ import annotations

import json
import re
import time

from typer.testing import CliRunner

from granary import __version__
from granary.cli.main import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"granary {__version__}"


def test_a_job_no_node_can_hold_says_so_at_submit_and_in_jobs() -> None:
    from granary.catalog import open_catalog
    from granary.config import Settings
    from granary.sched.journal import register_node
    from granary.sched.model import NodeSpec

    catalog = open_catalog(Settings.from_env().catalog_url)
    with catalog.write() as conn:
        register_node(conn, NodeSpec(name="laptop", gpus=0, cpus=2.0), time.time() - 3 * 86400)
    result = runner.invoke(app, ["submit", "--name", "train", "--gpus", "1", "--json", "--", "true"])
    assert result.exit_code == 0, result.output
    assert "cannot run on any registered node: each replica needs 1 GPU(s)" in result.stderr
    job_id = json.loads(result.stdout)["train"]
    listed = json.loads(runner.invoke(app, ["jobs", "--json"]).stdout)
    assert listed[0]["id"] == job_id and "laptop, has 0 GPU(s)" in listed[0]["reason"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", listed[0]["submit_time_iso"])
    nodes = json.loads(runner.invoke(app, ["nodes", "--json"]).stdout)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", nodes[0]["last_heartbeat_iso"])
    table = runner.invoke(app, ["nodes"]).stdout
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", table)  # three days ago: a date, not a bare epoch


def test_unknown_executor_is_refused_at_submit() -> None:
    result = runner.invoke(app, ["submit", "--name", "x", "--executor", "slurmm", "--", "true"])
    assert result.exit_code == 1 and "job field 'executor' must be one of local, slurm, ray, k8s" in result.stderr


def test_simulate_reads_the_trace_from_the_setting_or_says_where_it_comes_from(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    missing = runner.invoke(app, ["sched", "simulate", "--gpus", "8"])
    assert missing.exit_code == 1 and "set GRANARY_TRACE" in missing.stderr and "Philly" in missing.stderr
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,duration,num_gpus\n0,60,1\n10,30,2\n")
    monkeypatch.setenv("GRANARY_TRACE", str(trace))
    ok = runner.invoke(app, ["sched", "simulate", "--gpus", "8", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["jobs"] == 2
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["sched", "simulate", "--trace", "t.csv", "--gpus", "8"]).exit_code == 0


def test_tokenizer_train_warns_when_the_text_cannot_fill_the_vocabulary(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    from granary.store import open_store

    store = open_store()
    store.create_dataset("tiny")
    docs = [{"id": f"d{i}", "text": "a small text, said twice"} for i in range(3)]
    store.commit_table("tiny", pa.Table.from_pylist(docs))
    out = runner.invoke(app, ["tokenizer", "train", "tiny", "--vocab-size", "8192", "-o", str(tmp_path / "t.json"),
                              "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert got["short"] and got["vocab_size"] < 8192
    assert f"has {got['vocab_size']:,} tokens, not the 8,192 asked for" in out.stderr


def test_curate_steps_lists_every_step_with_its_options() -> None:
    out = runner.invoke(app, ["curate", "steps", "--json"])
    assert out.exit_code == 0, out.output
    steps = {d["step"]: d for d in json.loads(out.stdout)}
    assert {"pii", "exact_dedup", "minhash_dedup", "gopher_quality"} <= set(steps)
    assert steps["exact_dedup"]["kind"] == "global"
    assert {"name": "collapse_whitespace", "type": "bool", "default": True} in steps["exact_dedup"]["options"]
    assert "gopher_quality" in runner.invoke(app, ["curate", "steps"]).stdout


def test_malformed_pipeline_yaml_is_two_lines_with_file_and_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nsteps:\n  - step: pii\n   bad: [1\n")
    out = runner.invoke(app, ["curate", "web", "-p", str(bad), "-o", "x"])
    assert out.exit_code == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and f"{bad}:4:4: not valid YAML" in lines[0] and "granary curate steps" in lines[1]


def _commands(group, path=()):  # type: ignore[no-untyped-def]
    subs = getattr(group, "commands", None)
    if subs:
        for name, sub in subs.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), {o for p in group.params for o in getattr(p, "opts", [])}


def test_every_command_has_json_except_those_the_readme_names() -> None:
    from pathlib import Path

    import typer.main

    without = sorted(name for name, opts in _commands(typer.main.get_command(app)) if "--json" not in opts)
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("Commands without `--json`:"))
    stated = sorted(x.strip(" `.") for x in line.split(":", 1)[1].split(","))
    assert without == stated, "update the README's list of commands without --json (or add --json)"


def test_elastic_submit_and_simulate_flags(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from granary.catalog import open_catalog
    from granary.config import Settings
    from granary.sched.journal import get_job

    result = runner.invoke(app, ["submit", "--name", "e", "--gpus", "2", "--resizable", "--max-gpus", "8",
                                 "--batch-size", "64", "--max-batch-size", "512", "--json", "--", "true"])
    assert result.exit_code == 0, result.output
    row = get_job(open_catalog(Settings.from_env().catalog_url), json.loads(result.stdout)["e"])[0]
    spec = row.spec
    assert (spec["resizable"], spec["min_gpus"], spec["max_gpus"], spec["max_batch_size"]) == (True, None, 8, 512)
    bad = runner.invoke(app, ["submit", "--name", "e", "--gpus", "2", "--max-gpus", "8", "--", "true"])
    assert bad.exit_code == 1 and "need resizable: true" in bad.stderr
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,duration,num_gpus\n0,600,1\n10,300,2\n20,900,1\n")
    runs = {}
    for args in (["--policy", "pollux"], ["--cost-model", "ideal"], ["--disable-cost", "restart"]):
        out = runner.invoke(app, ["sched", "simulate", "--trace", str(trace), "--gpus", "8", "--json", *args])
        assert out.exit_code == 0, out.output
        runs[args[-1]] = json.loads(out.stdout)
    assert runs["pollux"]["resizes"] >= 0 and runs["pollux"]["jobs"] == 3
    assert runs["ideal"]["avg_jct_s"] == (600 + 300 + 900) / 3  # the ideal model: trace durations exactly
    bad = runner.invoke(app, ["sched", "simulate", "--trace", str(trace), "--gpus", "8", "--disable-cost", "free"])
    assert bad.exit_code == 1 and "unknown costs" in bad.stderr
