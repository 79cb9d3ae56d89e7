"""Bodies rendered from dicts by the cached TypeAdapters are the bytes the pydantic models would give."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the API needs granary[server]")

from granary.api.paging import Page
from granary.api.render import render, render_page
from granary.api.schemas import JobDetail, Version, VersionDetail

VERSION = {"id": "ab" * 32, "dataset": "web", "kind": "documents", "parents": ["cd" * 32], "num_rows": 40,
           "num_bytes": 1234, "num_shards": 2, "num_tokens": None, "message": "ingest", "author": "olive",
           "created_at": 1700000000.25, "state": "live"}


def test_page_matches_the_model() -> None:
    rows = [VERSION, {**VERSION, "id": "ef" * 32, "created_at": 1700000001, "manifest_key": "not in the model"}]
    body = render_page(Version, rows, "cursor").body
    model = Page[Version](items=[Version(**r) for r in rows], next_cursor="cursor")
    assert json.loads(body) == json.loads(model.model_dump_json())
    assert body == model.model_dump_json().encode()  # same field order, float widening, extras left out
    assert json.loads(render_page(Version, [], None).body) == {"items": [], "next_cursor": None}


def test_nested_detail_and_alias() -> None:
    job = {"id": "j1", "name": "train", "tenant": "default", "state": "running", "reason": "placed", "attempt": 1,
           "submit_time": 10.0, "first_start": 11.5, "finish_time": None, "gpus": 2, "priority": None,
           "spec": {"replicas": 2}, "events": [{"seq": 1, "from_state": "pending", "to_state": "running",
                                               "reason": "placed", "at": 11.5}],
           "attempts": [{"attempt": 1, "replica": 0, "node": "n1", "executor": "local", "state": "running",
                         "exit_code": None, "started_at": 11.5, "ended_at": None}],
           "node_restarts": 0, "job_restarts": 0, "preemptions": 0, "cancel_requested": False}
    assert render(JobDetail, job).body == JobDetail(**job).model_dump_json().encode()
    detail = {**VERSION, "schema": [{"name": "text", "type": "string"}], "lineage": {}, "metadata": {},
              "side_tables": []}
    assert json.loads(render(VersionDetail, detail).body)["schema"] == detail["schema"]
