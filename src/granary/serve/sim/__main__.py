"""Run one simulated LLM server: ``python -m granary.serve.sim --port 0 --model m``; prints its URL as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from granary.serve.sim.server import SimConfig, sim_app


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, SimConfig]:
    """Command-line options, and the SimConfig they describe."""
    p = argparse.ArgumentParser(prog="python -m granary.serve.sim", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--model", default="sim")
    p.add_argument("--per-token-ms", type=float, default=5.0)
    p.add_argument("--prefill-per-token-ms", type=float, default=0.1)
    p.add_argument("--cached-prefill-per-token-ms", type=float, default=0.005)
    p.add_argument("--slowdown", type=float, default=1.0)
    p.add_argument("--max-concurrency", type=int, default=16)
    p.add_argument("--kv-blocks", type=int, default=8192)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--fail-after-chunks", type=int, default=None)
    p.add_argument("--hang", action="store_true")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cfg = SimConfig(model=a.model, per_token_s=a.per_token_ms / 1e3, prefill_per_token_s=a.prefill_per_token_ms / 1e3,
                    cached_prefill_per_token_s=a.cached_prefill_per_token_ms / 1e3, slowdown=a.slowdown,
                    max_concurrency=a.max_concurrency, kv_blocks=a.kv_blocks, default_max_tokens=a.max_tokens,
                    fail_after_chunks=a.fail_after_chunks, hang=a.hang, error_rate=a.error_rate, seed=a.seed)
    return a, cfg


async def serve(host: str, port: int, config: SimConfig) -> None:
    """Serve until SIGTERM or SIGINT; prints ``{"url": ...}`` on stdout once listening."""
    from aiohttp import web

    runner = web.AppRunner(sim_app(config), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    sys.stdout.write(json.dumps({"url": f"http://{host}:{bound}", "model": config.model}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    from granary.serve.runtime import run

    args, cfg = parse_args(sys.argv[1:] if argv is None else argv)
    run(serve(args.host, args.port, cfg))


if __name__ == "__main__":
    main()
