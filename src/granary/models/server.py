"""The built-in model server: one registered model version behind an OpenAI-style completions API (CPU, aiohttp).

``POST /v1/completions`` takes ``{"model", "prompt" | "tokens", "max_tokens"}`` and answers greedy continuations
(a prompt's bytes are its token ids modulo the vocabulary); ``GET /health`` answers 200 once the weights are
loaded; ``GET /stats`` reports requests, errors and latency percentiles since start, which the canary watch
reads. Run it as ``granary gateway endpoint --model NAME -- python -m granary.models.worker serve ...`` so it
registers with gateways (see :mod:`granary.models.deploy`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from granary.store import Store

log = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 8
MAX_TOKENS = 256


class Engine:
    """Greedy generation with one model, one request at a time (CPU inference is not re-entrant here)."""

    def __init__(self, model: nn.Module, *, vocab_size: int, context: int) -> None:
        self.model = model
        self.vocab_size = vocab_size
        self.context = context
        self._lock = threading.Lock()

    def generate(self, tokens: list[int], max_tokens: int) -> list[int]:
        import torch

        ids = [t % self.vocab_size for t in tokens] or [0]
        out: list[int] = []
        with self._lock, torch.inference_mode():
            for _ in range(max_tokens):
                x = torch.tensor([ids[-self.context:]], dtype=torch.long)
                nxt = int(self.model(x)[0, -1].argmax())
                ids.append(nxt)
                out.append(nxt)
        return out


class Stats:
    """Requests, errors and the latencies of the last 1000 requests."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies_ms: deque[float] = deque(maxlen=1000)

    def to_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None)  # noqa: E731
        return {"requests": self.requests, "errors": self.errors, "p50_ms": p(0.5), "p95_ms": p(0.95)}


def should_fail(n: int, rate: float) -> bool:
    """Whether request ``n`` (0-based) is one of the injected failures: exactly ``rate`` of them, spread evenly."""
    return int((n + 1) * rate) > int(n * rate)


def make_app(engine: Engine, *, served_as: str, fail_rate: float = 0.0, ready: bool = True) -> Any:
    """The aiohttp application."""
    from aiohttp import web

    stats = Stats()

    async def complete(request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        n = stats.requests
        stats.requests += 1
        try:
            body = await request.json()
        except ValueError:
            stats.errors += 1
            return web.json_response({"error": "body is not JSON"}, status=400)
        if should_fail(n, fail_rate):
            stats.errors += 1
            return web.json_response({"error": "injected failure"}, status=500)
        prompt = body.get("tokens")
        if prompt is None:
            prompt = list(str(body.get("prompt", "")).encode())
        max_tokens = max(1, min(MAX_TOKENS, int(body.get("max_tokens") or DEFAULT_MAX_TOKENS)))
        out = await asyncio.to_thread(engine.generate, [int(t) for t in prompt], max_tokens)
        stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
        text = bytes(t % 256 for t in out).decode("latin-1")
        return web.json_response({"object": "text_completion", "model": served_as,
                                  "choices": [{"index": 0, "text": text, "tokens": out, "finish_reason": "length"}],
                                  "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(out)}})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": ready}, status=200 if ready else 503)

    async def stats_view(request: web.Request) -> web.Response:
        return web.json_response(stats.to_dict())

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": served_as, "object": "model"}]})

    app = web.Application()
    app.add_routes([web.post("/v1/completions", complete), web.get("/health", health), web.get("/stats", stats_view),
                    web.get("/v1/models", models)])
    return app


def serve(store: Store, ref: str, *, served_as: str, port: int, fail_rate: float = 0.0,
          never_ready: bool = False, host: str = "127.0.0.1", purpose: str | None = None) -> int:
    """Load ``ref`` from the registry and serve it until SIGTERM; returns the exit code."""
    from aiohttp import web

    from granary.models.registry import Registry

    registry = Registry(store)
    mv = registry.get(ref)
    model = registry.load(mv, purpose=purpose)  # the model's files carry its data's policy
    arch = mv.facts["arch"]
    engine = Engine(model, vocab_size=int(arch["vocab_size"]), context=int(arch["context"]))
    app = make_app(engine, served_as=served_as, fail_rate=fail_rate, ready=not never_ready)
    log.info("serving %s as %s on %s:%d", mv.ref, served_as, host, port)
    web.run_app(app, host=host, port=port, print=None, handle_signals=True)
    return 0
