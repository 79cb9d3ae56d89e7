"""Balancing policies in isolation: shares, stickiness, bounded load, latency and prefix awareness."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.serve.backend import Backend, LoadReport
from granary.serve.balancers import POLICIES, RequestInfo, make_balancer
from granary.serve.balancers.hashing import build_maglev_table
from granary.serve.balancers.prefix import block_hashes, prompt_of


def backends(weights: list[float], now: float = 0.0) -> list[Backend]:
    return [Backend(f"b{i}", f"http://127.0.0.1:{9000 + i}", w, now=now) for i, w in enumerate(weights)]


def test_registry_names_every_policy() -> None:
    assert sorted(POLICIES) == ["ip_hash", "least_request", "load_aware", "maglev", "p2c", "peak_ewma",
                                "prefix_aware", "random", "ring_hash", "round_robin", "weighted_round_robin"]
    with pytest.raises(ValueError, match="choices"):
        make_balancer("p2c", {"choices": 1})
    with pytest.raises(ValueError, match="table_size"):
        make_balancer("maglev", {"table_size": 100})
    with pytest.raises(TypeError):
        make_balancer("round_robin", {"nope": 1})


def test_round_robin_cycles() -> None:
    bs = backends([1, 1, 1])
    lb = make_balancer("round_robin")
    picks = [lb.pick(RequestInfo(), bs, 0.0).name for _ in range(9)]
    assert Counter(picks) == {"b0": 3, "b1": 3, "b2": 3}
    assert picks[:3] != picks[1:4] and len(set(picks[:3])) == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(0, 40))
def test_smooth_wrr_gives_each_backend_its_weight_in_every_window(weights: list[int], offset: int) -> None:
    """Every window of sum(weights) consecutive picks holds each backend exactly `weight` times."""
    bs = backends([float(w) for w in weights])
    lb = make_balancer("weighted_round_robin")
    lb.update(bs)
    total = sum(weights)
    picks = [lb.pick(RequestInfo(), bs, 0.0).name for _ in range(offset + 3 * total)]
    for start in range(offset, offset + 2 * total):
        window = Counter(picks[start:start + total])
        assert {f"b{i}": w for i, w in enumerate(weights)} == dict(window)


def test_smooth_wrr_spreads_a_heavy_backend() -> None:
    bs = backends([5, 1, 1])
    lb = make_balancer("weighted_round_robin")
    picks = "".join(lb.pick(RequestInfo(), bs, 0.0).name[1] for _ in range(7))
    assert picks == "0010200"  # nginx's documented sequence for {a:5, b:1, c:1}: a a b a c a a


def test_slow_start_ramps_a_new_backend() -> None:
    old, new = backends([1, 1])
    new.added_at, new.slow_start_s = 100.0, 10.0
    lb = make_balancer("weighted_round_robin")
    early = Counter(lb.pick(RequestInfo(), [old, new], 101.0).name for _ in range(1100))
    late = Counter(lb.pick(RequestInfo(), [old, new], 111.0).name for _ in range(1000))
    assert early["b1"] == 100 and late["b1"] == 500  # weight 0.1 at first, full weight after the window


def test_random_follows_weights() -> None:
    bs = backends([3, 1])
    lb = make_balancer("random", {"seed": 7})
    share = Counter(lb.pick(RequestInfo(), bs, 0.0).name for _ in range(8000))["b0"] / 8000
    assert 0.72 < share < 0.78


def test_least_request_and_p2c_avoid_the_busy_backend() -> None:
    bs = backends([1, 1, 1])
    bs[0].in_flight, bs[1].in_flight, bs[2].in_flight = 5, 0, 3
    assert make_balancer("least_request", {"seed": 1}).pick(RequestInfo(), bs, 0.0).name == "b1"
    p2c = make_balancer("p2c", {"seed": 1})
    picks = Counter(p2c.pick(RequestInfo(), bs, 0.0).name for _ in range(600))
    assert picks["b0"] == 0  # the busiest never wins a comparison
    assert picks["b1"] > picks["b2"]


def test_ip_hash_is_sticky_and_moves_off_a_removed_backend() -> None:
    bs = backends([1, 1, 1, 1])
    lb = make_balancer("ip_hash")
    lb.update(bs)
    ips = [f"10.0.{i // 250}.{i % 250}" for i in range(400)]
    first = {ip: lb.pick(RequestInfo(client_ip=ip), bs, 0.0).name for ip in ips}
    assert first == {ip: lb.pick(RequestInfo(client_ip=ip), bs, 0.0).name for ip in ips}
    assert len(set(first.values())) == 4
    without = [b for b in bs if b.name != "b2"]
    after = {ip: lb.pick(RequestInfo(client_ip=ip), without, 0.0).name for ip in ips}
    assert all(after[ip] == first[ip] for ip in ips if first[ip] != "b2")
    assert "b2" not in after.values()


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**31))
def test_ring_hash_moves_about_one_nth_of_keys_when_a_backend_is_added(n: int, salt: int) -> None:
    """Adding a backend moves keys only onto the new backend, and about 1/(n+1) of them."""
    keys = [f"user-{salt}-{i}" for i in range(3000)]
    lb = make_balancer("ring_hash", {"key": "body:user", "load_factor": None})
    bs = backends([1.0] * n)
    lb.update(bs)
    before = {k: lb.pick(RequestInfo(key=k), bs, 0.0).name for k in keys}
    grown = [*bs, Backend(f"b{n}", "http://127.0.0.1:1", 1.0)]
    lb.update(grown)
    after = {k: lb.pick(RequestInfo(key=k), grown, 0.0).name for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == f"b{n}" for k in moved)
    assert len(moved) / len(keys) <= 1.6 / (n + 1) + 0.02


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=2, max_size=8), st.floats(1.0, 2.0), st.integers(1, 400),
       st.integers(0, 2**31))
def test_bounded_load_never_exceeds_c_times_the_average(weights: list[int], c: float, requests: int,
                                                        salt: int) -> None:
    """With bounded load c, after every assignment no backend holds more than ceil(c x weighted average)."""
    lb = make_balancer("ring_hash", {"key": "header:x", "load_factor": c})
    bs = backends([float(w) for w in weights])
    lb.update(bs)
    total_w = sum(weights)
    for i in range(requests):
        b = lb.pick(RequestInfo(key=f"hot-{salt % 3}" if i % 2 else f"k{salt}-{i}"), bs, 0.0)
        b.in_flight += 1
        m = sum(x.in_flight for x in bs)
        for x in bs:
            assert x.in_flight <= math.ceil(c * m * x.weight / total_w)


def test_maglev_is_even_stable_and_minimally_disrupted() -> None:
    bs = backends([1, 1, 1, 1, 1])
    table = build_maglev_table(bs, 4093)
    counts = Counter(b.name for b in table)
    assert max(counts.values()) - min(counts.values()) <= 2
    lb = make_balancer("maglev", {"key": "header:x-session-id"})
    keys = [f"s{i}" for i in range(2000)]
    before = {k: lb.pick(RequestInfo(key=k), bs, 0.0).name for k in keys}
    assert before == {k: lb.pick(RequestInfo(key=k), bs, 0.0).name for k in keys}
    fewer = bs[:4]
    after = {k: lb.pick(RequestInfo(key=k), fewer, 0.0).name for k in keys}
    kept = sum(before[k] == after[k] for k in keys if before[k] != "b4")
    assert kept / sum(before[k] != "b4" for k in keys) > 0.9
    heavy = build_maglev_table(backends([3, 1]), 4093)
    assert 0.72 < sum(b.name == "b0" for b in heavy) / 4093 < 0.78


def test_peak_ewma_drops_a_slow_backend_quickly() -> None:
    bs = backends([1, 1, 1, 1])
    lb = make_balancer("peak_ewma", {"seed": 3, "choices": 0})
    now = 0.0
    picks: Counter[str] = Counter()
    for _ in range(400):
        b = lb.pick(RequestInfo(), bs, now)
        picks[b.name] += 1
        lb.on_done(b, RequestInfo(), ok=True, latency_s=0.5 if b.name == "b0" else 0.1, now=now)
        now += 0.01
    assert picks["b0"] < 0.05 * 400
    lb.on_done(bs[1], RequestInfo(), ok=False, latency_s=0.0, now=now)
    assert bs[1].ewma_s >= 1.0  # a failure counts as a slow response


def test_load_aware_prefers_the_idle_engine() -> None:
    bs = backends([1, 1, 1])
    bs[0].load = LoadReport(running=8, waiting=4, kv_cache_usage=0.9, at=10.0)
    bs[1].load = LoadReport(running=2, waiting=0, kv_cache_usage=0.2, at=10.0)
    bs[2].load = LoadReport(running=2, waiting=0, kv_cache_usage=0.95, at=10.0)
    lb = make_balancer("load_aware")
    assert lb.pick(RequestInfo(), bs, 11.0).name == "b1"
    assert lb.pick(RequestInfo(), bs, 100.0).name in {"b0", "b1", "b2"}  # stale reports are ignored


def test_prompt_of_chat_and_completions() -> None:
    text, affinity = prompt_of({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                                             {"role": "assistant", "content": "A1"},
                                             {"role": "user", "content": "U2"}]})
    assert text == "system\x1fS\x1euser\x1fU1\x1eassistant\x1fA1\x1euser\x1fU2\x1e"
    assert affinity == "system\x1fS\x1euser\x1fU1\x1e"
    assert prompt_of({"prompt": ["abc"]}) == ("abc", None)
    assert prompt_of({"input": 3}) == (None, None)
    assert block_hashes("a" * 300, 128)[:2] == block_hashes("a" * 256 + "zz", 128)
    assert len(block_hashes("a" * 127, 128)) == 0


def _chat(system: str, turns: list[str]) -> RequestInfo:
    messages = [{"role": "system", "content": system}]
    for i, t in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    prompt, key = prompt_of({"messages": messages})
    return RequestInfo(prompt=prompt, key=key)


def test_prefix_aware_follows_the_cache_and_falls_back_under_load() -> None:
    bs = backends([1] * 4)
    lb = make_balancer("prefix_aware", {"block_chars": 16, "busy_threshold": 2})
    lb.update(bs)
    system = "You are a helpful assistant. " * 20
    first = [f"question {i}: {'x' * 40}" for i in range(12)]
    homes = {i: lb.pick(_chat(system, [q]), bs, 0.0).name for i, q in enumerate(first)}
    assert len(set(homes.values())) >= 3  # a shared system prompt does not pull every conversation to one place
    for i, q in enumerate(first):  # later turns of a conversation go where its start is cached
        assert lb.pick(_chat(system, [q, "an answer", "a follow-up"]), bs, 0.0).name == homes[i]
    home = next(b for b in bs if b.name == homes[0])
    home.in_flight = 10
    moved = lb.pick(_chat(system, [first[0], "an answer", "more"]), bs, 0.0)
    assert moved.name != home.name and lb.fallbacks == 1
    home.in_flight = 0
    # the index now knows the conversation is cached on both; its own start matches on the new backend too
    assert lb.match(block_hashes(_chat(system, [first[0]]).prompt or "", 16), [moved])[0] > 0


def test_prefix_aware_processes_agree_without_sharing_state() -> None:
    """Two workers that never saw a conversation send it to the same backend (rendezvous on its start)."""
    bs = backends([1] * 5)
    a, b = make_balancer("prefix_aware"), make_balancer("prefix_aware")
    for i in range(50):
        info = RequestInfo(prompt=f"conversation {i} " * 30, key=f"start {i}")
        assert a.pick(info, bs, 0.0).name == b.pick(info, bs, 0.0).name


def test_prefix_index_forgets_a_removed_backend() -> None:
    lb = make_balancer("prefix_aware", {"block_chars": 8})
    bs = backends([1, 1])
    lb.update(bs)
    prompt = "prompt number 0001 with some words"
    hashes = block_hashes(prompt, 8)
    home = lb.pick(RequestInfo(prompt=prompt), bs, 0.0)
    assert lb.match(hashes, bs) == (len(hashes), [home])
    lb.update([b for b in bs if b is not home])
    assert lb.match(hashes, bs)[0] == 0  # its blocks and its slot are gone
    assert all(lb.shared.holders(h) == 0 for h in hashes)


def test_peak_ewma_avoids_a_backend_whose_first_answer_is_late() -> None:
    """Before any latency sample, a backend sitting on an unanswered request loses the next picks."""
    bs = backends([1, 1, 1])
    lb = make_balancer("peak_ewma", {"choices": 0, "seed": 1})
    stuck = RequestInfo()
    assert lb.pick(stuck, bs, 0.0) is not None
    first = next(b for b in bs if lb.waiting.get(b.name))
    first.in_flight = 1
    for b in bs:  # the others answer in 50 ms
        if b is not first:
            b.observe_latency(0.05, 0.0)
    picks = Counter(lb.pick(RequestInfo(), bs, 0.5).name for _ in range(20))
    assert picks[first.name] == 0  # 0.5 s without an answer is worse than 50 ms with one in flight
    lb.on_done(first, stuck, ok=True, latency_s=0.5, now=0.5)
    assert not lb.waiting[first.name] and first.ewma_s == 0.5


def _conversation(i: int, turns: int) -> RequestInfo:
    system = "You are a helpful assistant. " * 20
    msgs = [f"conversation {i}: " + "words " * 40]
    for t in range(1, turns):
        msgs += [f"answer {t} " * 5, f"follow-up {t} " * 5]
    return _chat(system, msgs)


def test_prefix_aware_spreads_new_conversations_by_queued_work() -> None:
    bs = backends([1] * 4)
    lb = make_balancer("prefix_aware", {"block_chars": 16})
    lb.update(bs)
    reqs = [_conversation(i, 1) for i in range(8)]
    first = [lb.pick(r, bs, 0.0) for r in reqs]  # none answered yet: work piles up
    assert Counter(b.name for b in first) == {"b0": 2, "b1": 2, "b2": 2, "b3": 2}
    for b in bs:
        assert lb.load(b) == pytest.approx(sum(r.cost for r, c in zip(reqs, first, strict=True) if c is b))
    assert all(r.cost > 1.0 for r in reqs)


def test_prefix_aware_keeps_a_conversation_home_until_the_queue_there_costs_more() -> None:
    bs = backends([1] * 4)
    lb = make_balancer("prefix_aware", {"block_chars": 16})
    lb.update(bs)
    req = _conversation(0, 1)
    home = lb.pick(req, bs, 0.0)
    lb.on_done(home, req, ok=True, latency_s=0.1, now=0.0)
    assert lb.load(home) == 0.0
    for turns in (2, 3):
        nxt = _conversation(0, turns)
        assert lb.pick(nxt, bs, 0.0) is home  # cached there: only the new turn's blocks are work
        lb.on_done(home, nxt, ok=True, latency_s=0.1, now=0.0)
    lb.pending[home.name] = 1_000.0  # a long queue of cold prefills at home
    assert lb.pick(_conversation(0, 4), bs, 0.0) is not home


def test_prefix_aware_workers_share_placements_and_load() -> None:
    """A turn that reaches another worker process goes where the conversation's start is cached."""
    from granary.serve.balancers.shared import SharedRouteState

    buf = bytearray(SharedRouteState.in_memory(2).buf)
    a, b = make_balancer("prefix_aware", {"block_chars": 16}), make_balancer("prefix_aware", {"block_chars": 16})
    a.attach(SharedRouteState(buf, worker=0, num_workers=2))
    b.attach(SharedRouteState(buf, worker=1, num_workers=2))
    bs_a, bs_b = backends([1] * 4), backends([1] * 4)
    busy = _conversation(99, 1)
    a.pick(busy, bs_a, 0.0)  # worker a books work on one backend ...
    blocked = next(x for x in bs_b if a.pending.get(x.name))
    assert b.load(blocked) > 0  # ... which worker b sees
    req = _conversation(0, 1)
    home = a.pick(req, bs_a, 0.0)
    assert home.name != blocked.name  # the new conversation went where no work waits
    a.on_done(home, req, ok=True, latency_s=0.1, now=0.0)
    later = b.pick(_conversation(0, 3), bs_b, 0.0)
    assert later.name == home.name


def test_prefix_aware_load_fallback_counts_every_workers_requests() -> None:
    """A backend busy with another worker's requests is left for the least loaded one, as if they were local."""
    from granary.serve.balancers.shared import SharedRouteState

    buf = bytearray(SharedRouteState.in_memory(2).buf)
    a = make_balancer("prefix_aware", {"block_chars": 16, "busy_threshold": 2, "request_cost_blocks": 0})
    b = make_balancer("prefix_aware", {"block_chars": 16, "busy_threshold": 2, "request_cost_blocks": 0})
    a.attach(SharedRouteState(buf, worker=0, num_workers=2))
    b.attach(SharedRouteState(buf, worker=1, num_workers=2))
    bs_a, bs_b = backends([1] * 3), backends([1] * 3)
    req = _conversation(0, 1)
    home = a.pick(req, bs_a, 0.0)
    a.on_first_byte(home, req, 0.0)  # its prefill is done; the request keeps decoding
    for _ in range(3):  # three more requests in worker a on the same backend, prefills done
        extra = _conversation(0, 2)
        assert a.pick(extra, bs_a, 0.0) is home
        a.on_first_byte(home, extra, 0.0)
    later = b.pick(_conversation(0, 3), bs_b, 0.0)  # worker b: 4 requests wait there, 0 elsewhere
    assert later.name != home.name and b.fallbacks == 1
