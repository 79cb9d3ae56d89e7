"""The gateway with real processes: OpenAI routes, SSE pass-through, bad input, workers sharing the port."""

from __future__ import annotations

import http.client as httpc
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.serve.conftest import Proc, http, metric

pytestmark = pytest.mark.slow  # real processes: gateways and simulated servers


def _route(name: str, sims: list[Proc], **kw: object) -> dict[str, object]:
    return {"name": name, "backends": [{"name": f"s{i}", "url": s.info["url"]} for i, s in enumerate(sims)],
            "health": {"interval_s": 0.2}, **kw}


def test_openai_routes_streams_and_bad_input(sim: Callable[..., Proc], gateway: Callable[..., Proc]) -> None:
    sims = [sim(model="m", per_token_ms=20) for _ in range(2)]  # tokens 20 ms apart stay apart on a busy machine
    gw = gateway({"workers": 2, "max_body_bytes": 4096, "routes": [
        _route("chat", sims, models=["m"], policy="round_robin"),
        _route("plain", sims, path_prefix="/ping", policy="weighted_round_robin")]})
    url, admin = gw.info["url"], gw.info["admin_url"]
    assert gw.info["workers"] == 2
    status, body = http("GET", f"{url}/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["m"]
    status, body = http("POST", f"{url}/v1/chat/completions",
                        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "t0 t1 t2 t3 "
    status, body = http("POST", f"{url}/v1/completions", {"model": "m", "prompt": "x", "max_tokens": 5,
                                                          "stream": True})
    events = [e for e in body.decode().split("\n\n") if e]
    assert status == 200 and len(events) == 6 and events[-1] == "data: [DONE]"
    assert [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]] == [f"t{i} " for i in range(5)]
    assert http("GET", f"{url}/ping")[0] == 200

    bad = [
        (http("POST", f"{url}/v1/completions", b'{"model": "m", "prompt": '), 400, "bad_json"),
        (http("POST", f"{url}/v1/completions", b"[1, 2]"), 400, "bad_json"),
        (http("POST", f"{url}/v1/completions", {"prompt": "no model"}), 400, "bad_request"),
        (http("POST", f"{url}/v1/completions", {"model": "gpt-9", "prompt": "x"}), 404, "unknown_model"),
        (http("POST", f"{url}/v1/completions", {"model": "m", "prompt": "x" * 10_000}), 413, "body_too_large"),
        (http("GET", f"{url}/nowhere"), 404, "no_route"),
    ]
    for (status, body), want_status, code in bad:
        err = json.loads(body)["error"]
        assert (status, err["code"]) == (want_status, code), body
        assert err["message"]
    assert "known models: m" in json.loads(bad[3][0][1])["error"]["message"]
    # a chunked upload that grows past the limit is cut off too
    host, port = urlsplit(url).hostname, urlsplit(url).port
    conn = httpc.HTTPConnection(host, port, timeout=10)
    conn.request("POST", "/v1/completions", body=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]),
                 encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()

    status, body = http("POST", f"{url}/v1/chat/completions",
                        {"model": "m", "messages": [{"role": "user", "content": "still here"}]})
    assert status == 200  # the gateway keeps serving
    text = http("GET", f"{admin}/metrics")[1].decode()
    for reason, n in (("bad_json", 2), ("bad_request", 1), ("unknown_model", 1), ("body_too_large", 2),
                      ("no_route", 1)):
        assert metric(text, "granary_gateway_rejected_total", reason=reason) == n, reason
    assert metric(text, "granary_gateway_requests_total", route="chat", code="200") == 3
    assert metric(text, "granary_gateway_time_to_first_token_seconds_count", route="chat") == 1
    assert 1 <= metric(text, "granary_gateway_inter_token_latency_seconds_count", route="chat") <= 5  # chunks may merge
    assert metric(text, "granary_gateway_backend_healthy", route="chat") == 2
    assert metric(text, "granary_gateway_in_flight_requests") == 0


def test_workers_share_the_port_and_apply_admin_changes(sim: Callable[..., Proc], gateway: Callable[..., Proc],
                                                        env: dict[str, str], tmp_path: object) -> None:
    import subprocess
    import sys

    sims = [sim(model="m", per_token_ms=1) for _ in range(2)]
    log = f"{tmp_path}/access.jsonl"
    gw = gateway({"name": "wk", "workers": 2, "access_log": log, "routes": [
        _route("chat", sims[:1], models=["m"], policy="least_request", slow_start_s=0, drain_s=2)]})
    url = gw.info["url"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "granary.cli.main", "gateway", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    added = cli("backend", "add", "chat", "s1", sims[1].info["url"], "--weight", "2", "--name", "wk", "--json")
    assert added.returncode == 0, added.stderr
    served: dict[str, int] = {}
    for _ in range(60):  # fresh connections: the kernel spreads them over both workers
        status, body = http("POST", f"{url}/v1/completions", {"model": "m", "prompt": "p", "max_tokens": 1},
                            headers={"Connection": "close"})
        assert status == 200
    listing = json.loads(cli("backend", "list", "--name", "wk", "--json").stdout)
    counts = {b["name"]: b["requests"] for b in listing["routes"]["chat"]}
    assert listing["workers"] == 2 and counts["s1"] > 0 and counts["s0"] > 0
    served = {}
    time.sleep(0.3)  # the access log is flushed every 0.1 s
    for line in Path(log).read_text().splitlines():
        rec = json.loads(line)
        served[rec["pid"]] = served.get(rec["pid"], 0) + 1
        assert rec["route"] == "chat" and rec["status"] == 200 and rec["duration_ms"] > 0
    assert len(served) == 2, served  # both worker processes answered, and both knew the new backend
    assert cli("backend", "weight", "chat", "s1", "-5", "--name", "wk").returncode != 0
    bad = cli("backend", "weight", "chat", "nope", "3", "--name", "wk")
    assert bad.returncode == 1 and "no backend 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    assert cli("backend", "drain", "chat", "s0", "--name", "wk").returncode == 0
    before = {b["name"]: b["requests"] for b in json.loads(cli("backend", "list", "--name", "wk", "--json").stdout)
              ["routes"]["chat"]}
    for _ in range(20):
        assert http("POST", f"{url}/v1/completions", {"model": "m", "prompt": "p", "max_tokens": 1},
                    headers={"Connection": "close"})[0] == 200
    after = {b["name"]: b["requests"] for b in json.loads(cli("backend", "list", "--name", "wk", "--json").stdout)
             ["routes"]["chat"]}
    assert after["s0"] == before["s0"] and after["s1"] == before["s1"] + 20  # nothing new goes to a drained one
    assert cli("backend", "remove", "chat", "s1", "--name", "wk").returncode == 0
    status, body = http("POST", f"{url}/v1/completions", {"model": "m", "prompt": "p"})
    assert status == 503 and json.loads(body)["error"]["code"] == "no_backend"
    st = json.loads(cli("status", "--name", "wk", "--json").stdout)
    assert len({w["pid"] for w in st["workers"]}) == 2


def test_slow_client_gets_408_and_the_gateway_keeps_serving(sim: Callable[..., Proc],
                                                            gateway: Callable[..., Proc]) -> None:
    s = sim(model="m", per_token_ms=1)
    gw = gateway({"client_idle_s": 0.5, "routes": [_route("chat", [s], models=["m"])]})
    host, port = urlsplit(gw.info["url"]).hostname, urlsplit(gw.info["url"]).port
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\"")
        reply = conn.recv(4096)  # the client stalls; the gateway answers instead of waiting forever
    assert reply.startswith(b"HTTP/1.1 408")
    assert http("POST", f"{gw.info['url']}/v1/completions", {"model": "m", "prompt": "x"})[0] == 200
    assert metric(http("GET", f"{gw.info['admin_url']}/metrics")[1].decode(), "granary_gateway_rejected_total",
                  reason="client_gone") == 1
