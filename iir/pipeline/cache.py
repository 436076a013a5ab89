"""Cache stage (after route, before select): answer identical deterministic requests from the
response cache, and store what the relay sent.

* ``x-iir-cache``: ``hit`` | ``miss`` | ``bypass`` (and ``ctx.cache`` for the log line).
* ``Cache-Control: no-cache`` skips the lookup (the fresh answer is still stored);
  ``no-store`` skips storing. Non-deterministic requests (no ``temperature: 0``, no ``seed``)
  are ``bypass`` unless the spec turns ``deterministic_only`` off.
* Store down: ``bypass``; the request is served normally.
* Single-flight: while one request for a key is upstream, identical ones wait for its entry
  and are answered from it (``hit``); if it could not be cached they go upstream themselves.
* A hit is replayed as SSE to a streaming client and as JSON otherwise; the ``egress`` hook
  (e.g. Anthropic clients) is honoured.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from iir.pipeline.context import Next, RequestContext, Stage
from iir.policies.cache import (
    CACHEABLE_ENDPOINTS,
    BodyCapture,
    ResponseCache,
    assemble_stream,
    cache_key,
    is_deterministic,
    replay_stream,
)
from iir.policies.runtime import POLICIES, PolicyServices
from iir.policies.store import StoreUnavailable

__all__ = ["make_stage"]

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
FOLLOWER_WAIT = 600.0  # bounded by the leader's own upstream timeouts; this is a backstop


def _set(ctx: RequestContext, state: str) -> None:
    ctx.cache = state
    ctx.response_headers["x-iir-cache"] = state


def _directives(ctx: RequestContext) -> set[str]:
    raw = ctx.http.headers.get("Cache-Control", "")
    return {d.strip().lower().split("=", 1)[0] for d in raw.split(",") if d.strip()}


async def _answer(ctx: RequestContext, entry: dict[str, Any]) -> web.StreamResponse:
    """Serve a cached entry as a hit, in the client's form."""
    _set(ctx, "hit")
    ctx.status, ctx.backend = 200, None
    usage = entry.get("usage") or {}
    ctx.usage = {k: int(v) for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens")
                 and isinstance(v, int)}
    egress = ctx.extras.get("egress")
    if not ctx.stream:
        body = orjson.dumps({**entry, "model": ctx.model})
        if egress is not None:
            body = egress.translate_body(200, body)
        ctx.first_byte_at = time.perf_counter()
        return web.Response(body=body, status=200, content_type="application/json",
                            headers=dict(ctx.response_headers))
    opts = ctx.body.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    resp = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **ctx.response_headers})
    await resp.prepare(ctx.http)
    ctx.first_byte_at = time.perf_counter()
    for event in replay_stream(entry, ctx.endpoint, model=ctx.model, include_usage=include_usage):
        await resp.write(egress.translate_stream(event) if egress is not None else event)
    if egress is not None:
        tail = egress.finish_stream()
        if tail:
            await resp.write(tail)
    await resp.write_eof()
    return resp


def _entry_from(ctx: RequestContext, resp: web.StreamResponse, capture: BodyCapture) -> dict[str, Any] | None:
    if resp.status != 200 or capture.overflow or ctx.extras.get("stream_error") or ctx.cache == "hit":
        return None
    raw = capture.value()
    if not raw:
        return None
    if ctx.stream:
        entry = assemble_stream(raw, ctx.endpoint)
        if entry is not None and not entry.get("usage") and ctx.usage:  # noted, not sent to this client
            usage = entry["usage"] = dict(ctx.usage)
            usage.setdefault("total_tokens", usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0))
        return entry
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entry, dict) or "error" in entry:
        return None
    return entry


async def _lead(ctx: RequestContext, nxt: Next, cache: ResponseCache, key: str, store: bool,
                ttl: float, limit: int) -> web.StreamResponse:
    """Go upstream, capture what the client gets, store it; release single-flight followers."""
    fut = cache.flight.lead(key)
    encoded: bytes | None = None
    capture = BodyCapture(limit)
    ctx.extras["capture"] = capture
    try:
        resp = await nxt(ctx)
        entry = _entry_from(ctx, resp, capture)
        if entry is not None:
            encoded = cache.encode(entry)
            if len(encoded) > limit:
                encoded = None
            elif store:
                await cache.put(key, encoded, ttl)
        return resp
    finally:
        ctx.extras.pop("capture", None)
        cache.flight.finish(key, fut, encoded)


async def _follow(fut: asyncio.Future[bytes | None]) -> dict[str, Any] | None:
    try:
        encoded = await asyncio.wait_for(asyncio.shield(fut), FOLLOWER_WAIT)
    except TimeoutError:
        return None
    if encoded is None:
        return None
    entry = orjson.loads(encoded)
    return entry if isinstance(entry, dict) else None


async def _cache(ctx: RequestContext, nxt: Next, services: PolicyServices) -> web.StreamResponse:
    table, route = ctx.table, ctx.route
    settings = table.cache
    if route is None or not route.cache or ctx.endpoint not in CACHEABLE_ENDPOINTS:
        return await nxt(ctx)
    deterministic_only = (route.cache_deterministic_only if route.cache_deterministic_only is not None
                          else settings.deterministic_only)
    max_entry_size = route.cache_max_entry_size if route.cache_max_entry_size is not None else settings.max_entry_size
    fields = route.cache_fields if route.cache_fields is not None else (settings.fields or _DEFAULT_FIELDS)
    if deterministic_only and not is_deterministic(ctx.endpoint, ctx.body):
        _set(ctx, "bypass")
        ctx.extras["cache_reason"] = "non-deterministic request"
        return await nxt(ctx)
    directives = _directives(ctx)
    no_cache, no_store = "no-cache" in directives, "no-store" in directives
    cache = services.cache(table)
    key = cache_key(ctx.endpoint, f"{ctx.model}|{route.name}", ctx.body, fields)
    ttl = route.cache_ttl if route.cache_ttl is not None else settings.ttl
    if no_cache:
        _set(ctx, "bypass")
        if no_store:
            return await nxt(ctx)
        return await _lead(ctx, nxt, cache, key, True, ttl, max_entry_size)
    fut = cache.flight.in_flight(key)
    if fut is not None:
        entry = await _follow(fut)
        if entry is not None:
            return await _answer(ctx, entry)
    try:
        entry = await cache.get(key)
    except StoreUnavailable:
        _set(ctx, "bypass")
        ctx.extras["cache_reason"] = "cache store unavailable"
        return await nxt(ctx)
    if entry is not None:
        return await _answer(ctx, entry)
    fut = cache.flight.in_flight(key)  # another request may have started while we looked
    if fut is not None:
        entry = await _follow(fut)
        if entry is not None:
            return await _answer(ctx, entry)
    _set(ctx, "miss")
    return await _lead(ctx, nxt, cache, key, not no_store, ttl, max_entry_size)


_DEFAULT_FIELDS = ("messages", "prompt", "input", "tools", "tool_choice", "temperature", "top_p", "max_tokens",
                   "max_completion_tokens", "stop", "seed", "response_format", "n", "logprobs", "top_logprobs",
                   "presence_penalty", "frequency_penalty", "logit_bias", "functions", "function_call",
                   "dimensions", "encoding_format")


def make_stage(app: web.Application) -> Stage:
    services = app[POLICIES]

    async def cache(ctx: RequestContext, nxt: Next) -> web.StreamResponse:
        return await _cache(ctx, nxt, services)

    return cache
