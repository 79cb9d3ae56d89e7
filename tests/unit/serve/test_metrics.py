"""The gateway's metrics: what the request path records reaches Prometheus on flush, exactly as observed."""

from __future__ import annotations

import random

import prometheus_client as pc

from granary.serve.metrics import LATENCY_BUCKETS, GatewayMetrics


def _samples(registry: pc.CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples
            if not s.name.endswith("_created")}


def test_flush_matches_recording_each_value_directly() -> None:
    rng = random.Random(3)
    values = [rng.choice([0.0, 1e-4, 0.0005, 0.001, 60.0, 200.0]) if i % 5 == 0 else rng.expovariate(20.0)
              for i in range(500)]
    batched = GatewayMetrics()
    for i, v in enumerate(values):
        batched.request("chat", f"b{i % 2}", 200 if i % 7 else 503, v)
        batched.flight("chat", "b0", 1 if i % 3 else -1)
    batched.reject("chat", "queue_full")
    assert _samples(batched.registry).get(("granary_gateway_requests_total", (
        ("backend", "b0"), ("code", "200"), ("route", "chat")))) is None  # nothing before the flush
    batched.flush()
    direct = pc.CollectorRegistry()
    ref = {"requests": pc.Counter("granary_gateway_requests_total", "", ["route", "backend", "code"],
                                  registry=direct),
           "duration": pc.Histogram("granary_gateway_request_duration_seconds", "", ["route", "backend"],
                                    buckets=LATENCY_BUCKETS, registry=direct)}
    for i, v in enumerate(values):
        ref["requests"].labels("chat", f"b{i % 2}", str(200 if i % 7 else 503)).inc()
        ref["duration"].labels("chat", f"b{i % 2}").observe(v)
    got, want = _samples(batched.registry), _samples(direct)
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9, key
    flight = sum(1 if i % 3 else -1 for i in range(500))
    assert got[("granary_gateway_in_flight_requests", (("backend", "b0"), ("route", "chat")))] == flight
    assert got[("granary_gateway_rejected_total", (("reason", "queue_full"), ("route", "chat")))] == 1
    assert not batched.dirty
    batched.flush()  # nothing new: nothing changes
    assert _samples(batched.registry) == got
