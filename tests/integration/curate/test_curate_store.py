"""Curation against a real store: output version, rejected/quarantine side tables, lineage, executors agree."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from granary.curate import PipelineSpec, curate
from granary.curate.synth import generate

SPEC = {"name": "it", "steps": ["normalize_unicode", "normalize_whitespace", "gopher_repetition", "gopher_quality",
                                "exact_dedup", "minhash_dedup", {"step": "pii", "mode": "redact"}]}


@pytest.fixture
def web(store):  # type: ignore[no-untyped-def]
    docs, truth = generate(1200, seed=5)
    store.create_dataset("web")
    store.commit_table("web", pa.Table.from_pylist(docs), message="synthetic")
    return docs, truth


def test_curate_commits_version_with_rejected_and_lineage(store, web) -> None:  # type: ignore[no-untyped-def]
    docs, truth = web
    assert store.manifest("web@main").shards.__len__() > 3  # several input shards -> several tasks
    result, rep = curate(store, "web@main", PipelineSpec.from_dict(SPEC), "clean", executor="inline")
    out = store.read_table("clean@main")
    rejected = store.read_side_table("clean@main", "rejected")
    assert out.num_rows + rejected.num_rows == len(docs)
    assert set(out.column("id").to_pylist()).isdisjoint(rejected.column("id").to_pylist())
    assert set(rejected.column("step").to_pylist()) >= {"exact_dedup", "minhash_dedup", "gopher_quality"}
    dup_ids = {docs[i]["id"] for i in truth.indices("exact_dup")}
    assert dup_ids <= set(rejected.column("id").to_pylist())
    assert "<EMAIL>" in " ".join(out.column("text").to_pylist())
    lineage = store.manifest("clean@main").lineage
    assert lineage["pipeline"]["name"] == "it" and lineage["granary_version"]
    assert lineage["input"]["input_version"] == store.resolve("web@main").id
    assert lineage["steps"]["exact_dedup"]["docs_in"] - lineage["steps"]["exact_dedup"]["docs_out"] == len(
        [r for r in rejected.column("step").to_pylist() if r == "exact_dedup"])
    assert Path(rep["paths"]["html"]).read_text().startswith("<!doctype html>")
    assert result.rows_out == out.num_rows


def test_process_pool_and_small_batches_match_inline(store, web) -> None:  # type: ignore[no-untyped-def]
    spec = PipelineSpec.from_dict(SPEC)
    curate(store, "web@main", spec, "a", executor="inline", report=False)
    # two worker processes, and batches of ~4 KiB (decisions of global steps applied across many batches)
    small = PipelineSpec.from_dict(dict(SPEC, batch_bytes=4096))
    curate(store, "web@main", small, "b", executor="local", num_workers=2, report=False)
    a, b = store.read_table("a@main"), store.read_table("b@main")
    assert a.equals(b)
    assert store.read_side_table("a@main", "rejected").equals(store.read_side_table("b@main", "rejected"))


def test_files_input_quarantines_bad_records(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    docs, _ = generate(300, seed=9)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs) + "{broken\n" + json.dumps({"id": "x"}) + "\n")
    result, _ = curate(store, str(path), PipelineSpec.from_dict(SPEC), "fromfiles", executor="inline",
                       report=False)
    q = store.read_side_table("fromfiles@main", "quarantine")
    assert q.num_rows == 2 and result.quarantined == 2
    assert sorted(q.column("line").to_pylist()) == [301, 302]
    assert result.rows_in == 300


def test_cli_curate_and_report(tmp_path: Path) -> None:
    from granary.cli.main import app
    from granary.store import open_store

    store = open_store()
    docs, _ = generate(400, seed=2)
    store.create_dataset("web")
    store.commit_table("web", pa.Table.from_pylist(docs))
    pipe = tmp_path / "p.yaml"
    pipe.write_text(json.dumps(SPEC))
    runner = CliRunner()
    res = runner.invoke(app, ["curate", "web@main", "--pipeline", str(pipe), "--output", "clean", "--workers", "1",
                              "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout[res.stdout.index("{"):])
    assert body["rows_in"] == 400 and body["output"]["rows"] == body["rows_out"]
    html = tmp_path / "r.html"
    res = runner.invoke(app, ["report", "clean", "--html", str(html)])
    assert res.exit_code == 0 and html.exists() and "Report clean@" in res.stdout
    res = runner.invoke(app, ["curate", "web@main", "--pipeline", str(tmp_path / "missing.yaml"), "--output", "x"])
    assert res.exit_code == 1 and "file not found" in res.output


def test_a_step_failing_in_a_worker_names_the_step_and_unit(tmp_path: Path) -> None:
    import pickle

    from granary.curate import ParquetDirSink, ReaderConfig, run_pipeline
    from granary.curate.errors import PipelineSpecError, StepFailedError

    for i in range(2):
        (tmp_path / f"in{i}.jsonl").write_text("".join(json.dumps({"id": f"{i}-{j}", "text": "hello"}) + "\n"
                                                       for j in range(3)))
    spec = PipelineSpec.from_dict({"steps": [{"step": "balance", "column": "label"}]})
    with pytest.raises(StepFailedError) as info:
        run_pipeline(spec, sink=ParquetDirSink(str(tmp_path / "out")), executor="local", num_workers=2,
                     reader=ReaderConfig(type="files", paths=(str(tmp_path),)), work_root=tmp_path / "w")
    assert info.value.step == "balance" and info.value.shard in (0, 1)
    assert "no column 'label'" in info.value.reason and info.value.hint
    again = pickle.loads(pickle.dumps(PipelineSpecError("x.y", "bad", hint="do z")))
    assert (again.where, again.reason, again.hint) == ("x.y", "bad", "do z")
