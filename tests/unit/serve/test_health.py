"""Outlier ejection, panic mode, health hysteresis, load reports, retry budget and safety, waiting rooms."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from granary.serve.admission import WaitRoom
from granary.serve.backend import Backend
from granary.serve.budget import RetryBudget, retry_is_safe
from granary.serve.config import HealthConfig, OutlierConfig
from granary.serve.health import HealthTracker, parse_load
from granary.serve.outlier import OutlierDetector, available


def members(n: int) -> list[Backend]:
    return [Backend(f"b{i}", "http://127.0.0.1:1") for i in range(n)]


def test_consecutive_failures_eject_with_backoff() -> None:
    det = OutlierDetector(OutlierConfig(consecutive_failures=3, base_ejection_s=2, max_ejection_s=5,
                                        max_ejected_percent=50))
    bs = members(4)
    b = bs[0]
    assert not det.record(b, "5xx", bs, 0.0) and not det.record(b, "ok", bs, 0.1)  # a success resets the count
    assert not det.record(b, "connect", bs, 0.2) and not det.record(b, "timeout", bs, 0.3)
    assert det.record(b, "reset", bs, 0.4)
    assert b.ejected(2.3) and not b.ejected(2.5)
    for t in (3.0, 3.1, 3.2):  # ejected again soon after: twice as long
        det.record(b, "connect", bs, t)
    assert b.ejections == 2 and b.ejected_until == 3.2 + 4.0
    for t in (8.0, 8.1, 8.2):  # a third time: capped at max_ejection_s
        det.record(b, "connect", bs, t)
    assert b.ejected_until == 8.2 + 5.0
    back = det.returned(bs, 14.0, {"b0"})
    assert back == [b] and b.added_at == 14.0  # it returns in slow start


def test_ejection_cap_and_panic_mode() -> None:
    det = OutlierDetector(OutlierConfig(consecutive_failures=1, max_ejected_percent=50))
    bs = members(4)
    assert det.record(bs[0], "connect", bs, 0.0) and det.record(bs[1], "connect", bs, 0.0)
    assert not det.record(bs[2], "connect", bs, 0.0)  # 2 of 4 out already: the cap holds
    ok, panic = available(bs, 0.1, 30.0)
    assert [b.name for b in ok] == ["b2", "b3"] and not panic
    for b in bs[1:]:
        b.active_healthy = False
    everyone, panic = available(bs, 0.1, 30.0)
    assert panic and len(everyone) == 4  # 0 of 4 available < 30 %: route to all rather than to none
    bs[3].draining = True
    everyone, _ = available(bs, 0.1, 30.0)
    assert len(everyone) == 3  # draining backends stay out even in panic


def test_health_hysteresis() -> None:
    tr = HealthTracker(HealthConfig(healthy_threshold=2, unhealthy_threshold=3))
    assert [tr.record(x) for x in (False, False, True, False, False, False)] == [False] * 5 + [True]
    assert not tr.healthy
    assert [tr.record(x) for x in (True, False, True, True)] == [False, False, False, True]
    assert tr.healthy


def test_parse_load_reads_vllm_sglang_and_tgi_names() -> None:
    text = ('# HELP x\nvllm:num_requests_running{model_name="m"} 3\nvllm:num_requests_waiting{model_name="m"} 7\n'
            'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\n')
    r = parse_load(text, 5.0)
    assert r is not None and (r.running, r.waiting, r.kv_cache_usage, r.at) == (3.0, 7.0, 0.5, 5.0)
    r = parse_load("sglang:num_queue_reqs 2\nsglang:num_running_reqs 4\nsglang:token_usage 0.25\n", 1.0)
    assert r is not None and (r.running, r.waiting, r.kv_cache_usage) == (4.0, 2.0, 0.25)
    assert parse_load("process_cpu_seconds_total 3\n", 1.0) is None


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 30), st.booleans()), max_size=300), st.floats(0, 1), st.floats(0, 5))
def test_retry_budget_never_exceeds_ratio_plus_floor(events: list[tuple[float, bool]], ratio: float,
                                                     floor: float) -> None:
    """Whenever a retry is allowed, the 10 s window ending then holds retries <= ratio x first tries + floor x 10."""
    budget = RetryBudget(ratio=ratio, min_per_s=floor, window_s=10)
    log: list[tuple[int, str]] = []
    for t, is_retry in sorted(events):
        if is_retry:
            if budget.try_spend(t):
                log.append((int(t), "retry"))
        else:
            budget.record_request(t)
            log.append((int(t), "req"))
    for end in {sec for sec, kind in log if kind == "retry"}:
        window = [kind for sec, kind in log if end - 10 < sec <= end and (sec, kind) in log]
        assert window.count("retry") <= ratio * window.count("req") + floor * 10 + 1e-9


def test_retry_safety() -> None:
    assert retry_is_safe(method="POST", got_response_bytes=False, status=None, retry_statuses=(503,))
    assert not retry_is_safe(method="POST", got_response_bytes=True, status=503, retry_statuses=(503,))
    assert retry_is_safe(method="GET", got_response_bytes=True, status=503, retry_statuses=(503,))
    assert not retry_is_safe(method="GET", got_response_bytes=True, status=500, retry_statuses=(503,))


def test_wait_room_is_bounded_fair_and_times_out() -> None:
    async def main() -> None:
        room = WaitRoom(1, max_waiting=2, timeout_s=0.2)
        assert await room.enter() == "ok"
        first = asyncio.create_task(room.enter())
        second = asyncio.create_task(room.enter())
        await asyncio.sleep(0)
        assert room.waiting == 2 and await room.enter() == "full"
        room.leave()  # handed to the oldest waiter
        assert await first == "ok" and room.used == 1
        assert await second == "timeout"  # nobody left in time
        room.leave()
        assert room.used == 0 and room.waiting == 0
        assert await room.enter() == "ok"
        cancelled = asyncio.create_task(room.enter())
        await asyncio.sleep(0)
        assert room.waiting == 1
        cancelled.cancel()  # a client that goes away while queued leaves no trace
        await asyncio.gather(cancelled, return_exceptions=True)
        assert room.waiting == 0 and room.used == 1
        room.leave()
        assert room.used == 0

    asyncio.run(main())
