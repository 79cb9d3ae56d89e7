"""Failure paths with real processes: a backend dying mid-stream, one that never answers, clients that leave,
a backend killed under load (ejection, retries, rejoin), graceful drain on removal."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from tests.integration.serve.conftest import Proc, http, metric

pytestmark = pytest.mark.slow  # real processes: gateways and simulated servers


def _route(sims: list[Proc], **kw: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "chat", "models": ["m"], "health": {"interval_s": 0.2, "timeout_s": 0.5},
                               "backends": [{"name": f"s{i}", "url": s.info["url"]} for i, s in enumerate(sims)]}
    return {**base, **kw}


def _metrics(gw: Proc) -> str:
    return http("GET", f"{gw.info['admin_url']}/metrics")[1].decode()


def test_backend_dying_mid_stream_gives_a_clean_error_event(sim: Callable[..., Proc],
                                                            gateway: Callable[..., Proc]) -> None:
    dying = sim(model="m", per_token_ms=2, fail_after_chunks=3)
    gw = gateway({"routes": [_route([dying], health={"enabled": False})]})
    status, body = http("POST", f"{gw.info['url']}/v1/completions",
                        {"model": "m", "prompt": "x", "max_tokens": 50, "stream": True}, timeout=15)
    events = [e for e in body.decode().split("\n\n") if e]
    assert status == 200
    assert [json.loads(e[6:])["choices"][0]["text"] for e in events[:3]] == ["t0 ", "t1 ", "t2 "]
    assert events[3].startswith("event: error\ndata: ")
    err = json.loads(events[3].split("data: ", 1)[1])["error"]
    assert err["code"] == "upstream_error" and "closed the stream after 3 chunks" in err["message"]
    assert events[4] == "data: [DONE]" and len(events) == 5  # whole events only, then a proper end
    assert metric(_metrics(gw), "granary_gateway_rejected_total", reason="stream_broken") == 1


def test_backend_that_never_answers_is_retried_then_ejected(sim: Callable[..., Proc],
                                                            gateway: Callable[..., Proc]) -> None:
    hung, good = sim(model="m", hang=True), sim(model="m", per_token_ms=1)
    gw = gateway({"routes": [_route([hung, good], policy="round_robin", health={"enabled": False},
                                    timeouts={"first_byte_s": 0.5},
                                    outlier={"consecutive_failures": 2, "base_ejection_s": 30})]})
    url = gw.info["url"]
    t0 = time.monotonic()
    codes = [http("POST", f"{url}/v1/completions", {"model": "m", "prompt": "x"}, timeout=10)[0] for _ in range(6)]
    assert codes == [200] * 6  # a try that got no byte is safe to retry, even for POST
    assert time.monotonic() - t0 < 6 * 0.5 + 3  # at most two waits before the hung backend is ejected
    text = _metrics(gw)
    assert metric(text, "granary_gateway_backend_ejections_total", backend="s0") == 1
    assert metric(text, "granary_gateway_retries_total", backend="s0") == 2
    assert metric(text, "granary_gateway_backend_healthy", backend="s0") == 0
    only_hung = gateway({"routes": [_route([hung], health={"enabled": False}, timeouts={"first_byte_s": 0.3},
                                           retry={"attempts": 2})]})
    status, body = http("POST", f"{only_hung.info['url']}/v1/completions", {"model": "m", "prompt": "x"})
    assert status == 504 and "no response within 0.3 s" in json.loads(body)["error"]["message"]


def test_client_leaving_mid_stream_frees_the_backend(sim: Callable[..., Proc], gateway: Callable[..., Proc]) -> None:
    s = sim(model="m", per_token_ms=20)
    gw = gateway({"routes": [_route([s])]})
    host, port = urlsplit(gw.info["url"]).hostname, urlsplit(gw.info["url"]).port
    body = json.dumps({"model": "m", "prompt": "x", "max_tokens": 500, "stream": True}).encode()
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while got.count(b"data: ") < 3:
            got += conn.recv(4096)
    deadline = time.monotonic() + 10
    while True:  # the gateway closes its side, so the engine stops generating for nobody
        running = metric(http("GET", f"{s.info['url']}/metrics")[1].decode(), "vllm:num_requests_running")
        text = _metrics(gw)
        if running == 0 and metric(text, "granary_gateway_in_flight_requests") == 0:
            break
        assert time.monotonic() < deadline, (running, text)
        time.sleep(0.05)
    assert metric(text, "granary_gateway_requests_total", code="499") == 1
    assert metric(text, "granary_gateway_rejected_total", reason="client_gone") == 1
    assert http("POST", f"{gw.info['url']}/v1/completions", {"model": "m", "prompt": "x"})[0] == 200


def test_killed_backend_is_ejected_retried_around_and_rejoins(sim: Callable[..., Proc],
                                                              gateway: Callable[..., Proc]) -> None:
    sims = [sim(model="m", per_token_ms=1, max_tokens=2) for _ in range(4)]
    gw = gateway({"workers": 2, "routes": [_route(sims, policy="round_robin", slow_start_s=2,
                                                  health={"interval_s": 0.2, "timeout_s": 2, "unhealthy_threshold": 3},
                                                  outlier={"consecutive_failures": 1, "base_ejection_s": 1})]})
    url, admin = gw.info["url"], gw.info["admin_url"]
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            results.append(http("POST", f"{url}/v1/completions", {"model": "m", "prompt": "x"})[0])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        while len(results) < 100:
            time.sleep(0.05)
        victim_port = urlsplit(sims[2].info["url"]).port
        sims[2].kill()
        killed_at = len(results)
        while len(results) < killed_at + 300:
            time.sleep(0.05)
        ejections = metric(_metrics(gw), "granary_gateway_backend_ejections_total", backend="s2")
        served_before = metric(_metrics(gw), "granary_gateway_requests_total", backend="s2", code="200")
        restarted = sim(port=victim_port, model="m", per_token_ms=1, max_tokens=2)
        assert restarted.info["url"] == sims[2].info["url"]
        deadline = time.monotonic() + 30
        while True:  # health checks see it again; ejection ends; it takes traffic again (slow start)
            status, _ = http("GET", f"{admin}/admin/backends", headers={"Authorization": "Bearer x"})
            back = metric(_metrics(gw), "granary_gateway_requests_total", backend="s2", code="200")
            if back > served_before + 20:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert results.count(200) == len(results), sorted(set(results))  # every request answered, none failed
    assert ejections >= 1
    assert status == 403  # the admin API refuses a wrong secret


def test_removed_backend_drains_its_streams(sim: Callable[..., Proc], gateway: Callable[..., Proc],
                                            env: dict[str, str]) -> None:
    from granary.serve.client import GatewayClient

    a, b = sim(model="m", per_token_ms=10), sim(model="m", per_token_ms=1)
    gw = gateway({"name": "dr", "routes": [_route([a], drain_s=30, slow_start_s=0)]}, extra_env={})
    import os

    os.environ["GRANARY_HOME"] = env["GRANARY_HOME"]
    client = GatewayClient.for_gateway("dr")
    out: dict[str, bytes] = {}
    streaming = threading.Thread(target=lambda: out.update(body=http(
        "POST", f"{gw.info['url']}/v1/completions", {"model": "m", "prompt": "x", "max_tokens": 100,
                                                     "stream": True}, timeout=30)[1]))
    streaming.start()
    deadline = time.monotonic() + 10
    while metric(client.metrics(), "granary_gateway_in_flight_requests", backend="s0") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.add("chat", "s1", b.info["url"])
    client.remove("chat", "s0")
    assert http("POST", f"{gw.info['url']}/v1/completions", {"model": "m", "prompt": "x"})[0] == 200
    streaming.join(30)
    events = [e for e in out["body"].decode().split("\n\n") if e]
    assert len(events) == 101 and events[-1] == "data: [DONE]"  # the stream finished on the removed backend
    listing = client.backends()
    assert [m["name"] for m in listing["routes"]["chat"]] == ["s1"]
