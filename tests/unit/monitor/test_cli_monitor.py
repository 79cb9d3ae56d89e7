"""`granary agent --once`, `granary metrics`, `granary alerts`, `granary watch` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from granary.cli.main import app

pytest.importorskip("prometheus_client")
runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_agent_once_with_fake_gpus_stores_its_sample() -> None:
    out = json.loads(run("agent", "--once", "--json", "--fake-gpus", "2", "--node", "n7", "--interval", "0.1",
                         "--store-every-s", "0"))
    assert out["node"] == "n7" and out["gpu"] == "fake NVML (2 GPUs)"
    names = {s["name"] for s in out["samples"]}
    assert {"granary_gpu_up", "granary_node_memory_used_bytes", "granary_energy_node_joules_total"} <= names
    stored = json.loads(run("metrics", "--stored", "granary_gpu_up", "--json"))
    assert sorted(s["labels"]["gpu"] for s in stored) == ["0", "1"]
    assert all(s["labels"]["node"] == "n7" and s["value"] == 1.0 for s in stored)


def test_metrics_lists_the_contract() -> None:
    out = json.loads(run("metrics", "--json", "--owner", "serve"))
    assert {m["name"] for m in out} >= {"granary_gateway_requests_total", "granary_gateway_queue_depth"}
    assert {m["owner"] for m in out} == {"serve"}


def test_alerts_and_watch_once_on_an_empty_catalog() -> None:
    assert json.loads(run("alerts", "--json")) == []
    assert json.loads(run("watch", "run", "--once", "--json")) == []
    assert "silence 1" in run("watch", "silence", "node=n1", "--for", "30m")
    result = runner.invoke(app, ["watch", "silence", "node=n1", "--for", "soon"])
    assert result.exit_code != 0 and "not a duration" in result.output


def test_operator_requests_through_the_cli(tmp_path: object) -> None:
    from granary.catalog import open_catalog
    from granary.config import Settings
    from granary.sched.journal import register_node, submit_job
    from granary.sched.model import JobSpec, NodeSpec

    catalog = open_catalog(Settings.from_env().catalog_url)
    with catalog.write() as conn:
        register_node(conn, NodeSpec(name="n1", gpus=1, cpus=1.0), 0.0)
    job = submit_job(catalog, JobSpec(name="a"))
    assert "request 1 filed" in run("watch", "restart", job, "--reason", "looks hung")
    assert "request 2 filed" in run("watch", "evacuate", "n1")
    assert "request 1 filed" in run("watch", "restart", job)  # one pending request per target
    rows = json.loads(run("watch", "requests", "--json"))
    assert [(r["kind"], r["target"], r["state"]) for r in rows] == [("evacuate", "n1", "pending"),
                                                                   ("restart", job, "pending")]
    result = runner.invoke(app, ["watch", "evacuate", "nope"])
    assert result.exit_code == 1 and "nope" in result.output


def test_scrape_of_an_endpoint_that_lies_or_hangs_fails_clearly() -> None:
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/hang":
                time.sleep(5)
            body = b"this is {not prometheus\n"
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout case)

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        lies = runner.invoke(app, ["metrics", "--scrape", base + "/metrics"])
        assert lies.exit_code == 1 and "does not answer in the Prometheus text format" in lies.output
        hangs = runner.invoke(app, ["metrics", "--scrape", base + "/hang", "--timeout", "0.5"])
        assert hangs.exit_code == 1 and "cannot scrape" in hangs.output
    finally:
        server.shutdown()
        server.server_close()
