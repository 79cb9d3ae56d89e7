"""Stream ingestion benchmark: messages/s committed by `granary ingest-stream` vs a bare client loop.

    .venv/bin/python benchmarks/stream_ingest_bench.py [--messages 500000] [--sources redis,nats]

For each source the same prepared stream of small JSON messages ({"n": i, "v": ...}, ~40 bytes) is read twice,
in one run: by a bare client loop (large reads, acknowledgements, nothing stored: the anchor) and by Granary's
StreamIngester into committed versions of a table dataset (a fresh store in a temporary folder). Prints
messages/s, the ratio and the check that every message was committed once; JSON to
benchmarks/out/stream_ingest_bench.json. Target (issue 15): >= 100,000 messages/s from Redis Streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from granary.config import Settings
from granary.live import IngestConfig, StreamIngester
from granary.live.source import MessageSource
from granary.store import open_store


def body(i: int) -> bytes:
    return b'{"n": %d, "v": %d.5, "tag": "t%d"}' % (i, i % 1000, i % 7)


# -- redis ------------------------------------------------------------------------------------------
def redis_prepare(n: int) -> str:
    import redis

    stream = f"bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis()
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"data": body(i)})
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    return stream


def redis_bare(stream: str, noack: bool = False) -> int:
    """XREADGROUP COUNT 20000 with raw replies, one XACK per read (or NOACK reads): a fast plain redis-py loop."""
    import redis

    client = redis.Redis(protocol=2)
    client.set_response_callback("XREADGROUP", lambda r, **_: r)
    client.xgroup_create(stream, "bare", id="0")
    got = 0
    while True:
        reply = client.execute_command("XREADGROUP", "GROUP", "bare", "c", "COUNT", 20_000, "BLOCK", 200,
                                       *(("NOACK",) if noack else ()), "STREAMS", stream, ">")
        if not reply:
            client.xgroup_destroy(stream, "bare")
            return got
        entries = reply[0][1]
        payloads = [e[1][1] for e in entries]
        if not noack:
            client.xack(stream, "bare", *[e[0] for e in entries])
        got += len(payloads)


def redis_source(stream: str, ack: str = "xack") -> MessageSource:
    from granary.live.redis import RedisStreamSource

    return RedisStreamSource("redis://127.0.0.1:6379/0", stream, ack=ack)


def redis_cleanup(stream: str) -> None:
    import redis

    redis.Redis().delete(stream)


# -- nats -------------------------------------------------------------------------------------------
def _nats(coro_fn: Callable) -> object:  # type: ignore[type-arg]
    import nats

    async def go() -> object:
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            return await coro_fn(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(go())


def nats_prepare(n: int) -> str:
    stream = f"bench_{uuid.uuid4().hex[:8]}"

    async def fill(js) -> None:  # type: ignore[no-untyped-def]
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        for start in range(0, n, 5000):
            futs = [await js.publish_async(f"{stream}.ev", body(i)) for i in range(start, min(n, start + 5000))]
            await asyncio.gather(*futs)

    _nats(fill)
    return stream


def nats_bare(stream: str) -> int:
    from nats.js.api import AckPolicy, ConsumerConfig

    async def read(js) -> int:  # type: ignore[no-untyped-def]
        await js.add_consumer(stream, ConsumerConfig(durable_name="bare", ack_policy=AckPolicy.ALL,
                                                     max_ack_pending=-1))
        sub = await js.pull_subscribe_bind("bare", stream)
        got = 0
        while True:
            try:
                msgs = await sub.fetch(batch=10_000, timeout=0.5)
            except TimeoutError:
                return got
            payloads = [m.data for m in msgs]
            await msgs[-1].ack()
            got += len(payloads)

    return int(_nats(read))  # type: ignore[call-overload]


def nats_source(stream: str) -> MessageSource:
    from granary.live.nats import NatsJetStreamSource

    return NatsJetStreamSource("nats://127.0.0.1:4222", stream)


def nats_cleanup(stream: str) -> None:
    _nats(lambda js: js.delete_stream(stream))


SOURCES = {"redis": (redis_prepare, redis_bare, redis_source, redis_cleanup),
           "redis-noack": (redis_prepare, lambda s: redis_bare(s, noack=True), lambda s: redis_source(s, "none"),
                           redis_cleanup),
           "nats": (nats_prepare, nats_bare, nats_source, nats_cleanup)}


def run_one(name: str, n: int, home: Path) -> dict[str, object]:
    prepare, bare, source, cleanup = SOURCES[name]
    t0 = time.perf_counter()
    stream = prepare(n)
    produce_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        bare_n = bare(stream)
        bare_s = time.perf_counter() - t0
        store = open_store(Settings.from_env(home=home / name))
        cfg = IngestConfig(dataset="bench", every_s=5.0, idle_stop_s=0.5, batch_records=200_000)
        stats = StreamIngester(store, source(stream), cfg).run()
        numbers = store.read_table("bench", columns=["n"]).column("n").to_numpy()
        exactly_once = bool(len(numbers) == n and (np.bincount(numbers, minlength=n) == 1).all())
        # the idle wait that ends the run is not ingestion time
        granary_s = stats.seconds - cfg.idle_stop_s
    finally:
        cleanup(stream)
    return {"messages": n, "produce_per_s": round(n / produce_s), "bare_per_s": round(bare_n / bare_s),
            "granary_per_s": round(stats.records / granary_s), "ratio": round((stats.records / granary_s)
                                                                               / (bare_n / bare_s), 2),
            "commits": stats.commits, "exactly_once": exactly_once}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--sources", default="redis,redis-noack,nats")
    args = parser.parse_args()
    results: dict[str, object] = {"load_avg": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sources.split(","):
            results[name] = run_one(name, args.messages, Path(tmp))
            print(name, json.dumps(results[name]), flush=True)
    results["load_avg_after"] = os.getloadavg()
    results["target"] = {"redis_per_s": 100_000}
    print(json.dumps(results, indent=1))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "stream_ingest_bench.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
