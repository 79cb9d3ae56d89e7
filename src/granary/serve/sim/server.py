"""A simulated LLM server with an OpenAI-compatible API: prefill and per-token latency, a prefix KV cache,
a concurrency limit with a queue, SSE streaming, vLLM-style metrics, and faults to inject for tests."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from granary.serve.balancers.prefix import prompt_of
from granary.serve.sim.cache import PrefixCache


@dataclass(kw_only=True, frozen=True)
class SimConfig:
    """How the simulated engine behaves.

    Attributes:
        model: the model name it serves.
        per_token_s: decode time of one output token.
        prefill_per_token_s: prefill time of one uncached prompt token (prefills run one at a time, as compute does).
        cached_prefill_per_token_s: prefill time of one cached prompt token.
        slowdown: multiplies every time (a slow replica).
        max_concurrency: requests generated at once; more wait in the engine queue.
        kv_blocks: prefix-cache capacity in 16-token blocks.
        default_max_tokens: output tokens when a request does not say.
        fail_after_chunks: exit the process after sending this many chunks of a stream (fault injection).
        hang: accept requests and never answer them (fault injection).
        error_rate: share of requests answered with 500 (fault injection).
        seed: seed of the fault draws.
    """

    model: str = "sim"
    per_token_s: float = 0.005
    prefill_per_token_s: float = 0.0001
    cached_prefill_per_token_s: float = 0.000005
    slowdown: float = 1.0
    max_concurrency: int = 16
    kv_blocks: int = 8192
    default_max_tokens: int = 16
    fail_after_chunks: int | None = None
    hang: bool = False
    error_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("per_token_s", "prefill_per_token_s", "cached_prefill_per_token_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.slowdown <= 0 or self.max_concurrency < 1 or self.kv_blocks < 1:
            raise ValueError("slowdown must be > 0, max_concurrency and kv_blocks >= 1")
        if not 0 <= self.error_rate <= 1:
            raise ValueError("error_rate must be in [0, 1]")


class SimEngine:
    """The engine's state: the cache, the running and waiting requests, the prefill lock."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.cache = PrefixCache(config.kv_blocks)
        self.slots = asyncio.Semaphore(config.max_concurrency)
        self.prefill_lock = asyncio.Lock()
        self.running = 0
        self.waiting = 0
        self.requests = 0
        self.rng = random.Random(config.seed)

    async def admit(self) -> None:
        """Wait for a generation slot (counted as waiting meanwhile)."""
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        """Give the slot back."""
        self.running -= 1
        self.slots.release()

    async def prefill(self, prompt: str) -> tuple[int, int]:
        """Process the prompt; returns (prompt tokens, cached tokens)."""
        c = self.config
        tokens, cached = self.cache.lookup_and_insert(prompt.encode("utf-8", "surrogatepass"))
        delay = ((tokens - cached) * c.prefill_per_token_s + cached * c.cached_prefill_per_token_s) * c.slowdown
        async with self.prefill_lock:
            await asyncio.sleep(delay)
        return tokens, cached


async def _flushed(request: web.Request, bound_s: float = 5.0) -> None:
    """Wait until the response bytes written so far left the process (bounded: a stuck peer cannot hang us)."""
    transport = request.transport
    deadline = time.monotonic() + bound_s
    await asyncio.sleep(0)
    while transport is not None and transport.get_write_buffer_size() > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "code": code}},
                             status=status)


def sim_app(config: SimConfig) -> web.Application:
    """The aiohttp application of one simulated server."""
    engine = SimEngine(config)
    started = int(time.time())

    async def parse(request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "body is not JSON", "bad_json")
        if not isinstance(body, dict):
            return _error(400, "body must be an object", "bad_json")
        if body.get("model") != config.model:
            return _error(404, f"model {body.get('model')!r} not found; this server has {config.model!r}",
                          "model_not_found")
        return body

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await parse(request)
        if isinstance(body, web.Response):
            return body
        engine.requests += 1
        if config.hang:
            await asyncio.Event().wait()
        if config.error_rate and engine.rng.random() < config.error_rate:
            return _error(500, "injected failure", "sim_error")
        chat = request.path.endswith("/chat/completions")
        prompt, _ = prompt_of(body)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or config.default_max_tokens)
        await engine.admit()
        try:
            prompt_tokens, cached = await engine.prefill(prompt or "")
            if body.get("stream"):
                return await stream(request, chat, max_tokens, prompt_tokens, cached)
            await asyncio.sleep(max_tokens * config.per_token_s * config.slowdown)
            text = "".join(f"t{i} " for i in range(max_tokens))
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            return web.json_response({
                "id": f"cmpl-{engine.requests}", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": config.model, "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                          "total_tokens": prompt_tokens + max_tokens,
                          "prompt_tokens_details": {"cached_tokens": cached}}})
        finally:
            engine.release()

    async def stream(request: web.Request, chat: bool, max_tokens: int, prompt_tokens: int,
                     cached: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Sim-Cached-Tokens": str(cached)})
        await resp.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"
        for i in range(max_tokens):
            if i:
                await asyncio.sleep(config.per_token_s * config.slowdown)
            piece = f"t{i} "
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            event = {"id": f"cmpl-{engine.requests}", "object": obj, "model": config.model, "choices": [choice]}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
            if config.fail_after_chunks is not None and i + 1 >= config.fail_after_chunks:
                await _flushed(request)  # what was sent is on the wire (uvloop queues writes until the loop turns)
                os._exit(3)  # the engine dies mid-stream: the connection drops without a proper end
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def embeddings(request: web.Request) -> web.Response:
        body = await parse(request)
        if isinstance(body, web.Response):
            return body
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        await engine.admit()
        try:
            data = []
            for i, item in enumerate(items):
                await engine.prefill(str(item))
                rng = random.Random(str(item))
                data.append({"object": "embedding", "index": i, "embedding": [rng.uniform(-1, 1) for _ in range(8)]})
        finally:
            engine.release()
        return web.json_response({"object": "list", "data": data, "model": config.model})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": config.model, "object": "model",
                                                              "created": started, "owned_by": "granary-sim"}]})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def metrics(request: web.Request) -> web.Response:
        c = engine.cache
        lines = [f"vllm:num_requests_running{{model_name=\"{config.model}\"}} {engine.running}",
                 f"vllm:num_requests_waiting{{model_name=\"{config.model}\"}} {engine.waiting}",
                 f"vllm:kv_cache_usage_perc{{model_name=\"{config.model}\"}} {c.usage:.4f}",
                 f"vllm:prefix_cache_queries_total{{model_name=\"{config.model}\"}} {c.queries}",
                 f"vllm:prefix_cache_hits_total{{model_name=\"{config.model}\"}} {c.hits}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app["engine"] = engine
    app.add_routes([web.post("/v1/completions", generate), web.post("/v1/chat/completions", generate),
                    web.post("/v1/embeddings", embeddings), web.get("/v1/models", models),
                    web.get("/health", health), web.get("/ping", ping), web.get("/metrics", metrics)])
    return app
