"""The agent's HTTP service (aiohttp): ``/infer``, OpenAI chat completions, models and health.

Requests are validated and tokenized first (bad input never takes a queue slot), then admitted
up to ``max_queue`` at once (running + waiting); beyond that the agent answers 503 with
``Retry-After`` at once, so a full agent never hangs a client. A client that disconnects stops
its generation. Every error leaves as OpenAI-style JSON; no traceback reaches a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from iir.agent import protocol as p
from iir.agent.config import AgentConfig
from iir.agent.engine import Engine, GenerationResult, Prepared, QueueFullError
from iir.errors import IIRError, ModelNotFoundError, PayloadTooLargeError

__all__ = ["ENGINE", "STATE", "ServiceState", "create_app"]

log = logging.getLogger("iir.agent")
_DISCARD_LIMIT = 64 * 1024 * 1024  # past this, an oversized body is not even drained


@dataclass
class ServiceState:
    """Admission counter and recent throughput; lives on the app, touched only on the loop."""

    config: AgentConfig
    started: float = field(default_factory=time.time)
    admitted: int = 0
    served: int = 0
    recent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=32))

    def tokens_per_second(self) -> float:
        tokens = sum(t for t, _ in self.recent)
        seconds = sum(s for _, s in self.recent)
        return round(tokens / seconds, 1) if seconds > 0 else 0.0

    def retry_after(self) -> int:
        per_request = (sum(s for _, s in self.recent) / len(self.recent)) if self.recent else 1.0
        return max(1, min(60, math.ceil(per_request * self.admitted)))

    @contextlib.contextmanager
    def admit(self) -> Any:
        if self.admitted >= self.config.max_queue:
            wait = self.retry_after()
            raise QueueFullError(
                f"the agent is busy: {self.admitted} requests admitted, max_queue is {self.config.max_queue}; "
                f"retry after {wait} s", headers={"Retry-After": str(wait)})
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1


ENGINE = web.AppKey("iir.agent.engine", object)
STATE = web.AppKey("iir.agent.state", ServiceState)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def _error_response(err: IIRError) -> web.Response:
    return _json(err.to_openai(), status=err.status, headers=err.headers or None)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    try:
        return await handler(request)
    except IIRError as e:
        return _error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        err = IIRError(e.reason or "error", code=codes.get(e.status, "invalid_request"))
        err.status, err.type = e.status, "invalid_request_error"
        response = _error_response(err)
        if isinstance(e, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(e.allowed_methods))
        return response
    except Exception:  # the HTTP boundary: log the traceback, never send it
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return _error_response(IIRError("internal error in the agent; see its log"))


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, or a 413 ``request_too_large`` naming the limit when it is larger, like the router's
    ``server.max_body`` (the excess is drained, not stored)."""
    if request.content_length is not None and request.content_length > _DISCARD_LIMIT:
        raise PayloadTooLargeError(f"the request body is {request.content_length} bytes; this agent accepts at most "
                                   f"{limit} bytes (max_body)")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > _DISCARD_LIMIT:
            break
    if size > limit:
        raise PayloadTooLargeError(f"the request body is {size} bytes; this agent accepts at most {limit} bytes "
                                   "(max_body)")
    return b"".join(chunks)


async def _watch_disconnect(request: web.Request, cancel: threading.Event) -> None:
    while not cancel.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            cancel.set()
            return
        await asyncio.sleep(0.2)


class _Run:
    """One admitted generation: disconnect watcher, timing and stats around the engine call."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
        self.state = request.app[STATE]
        self.cancel = threading.Event()
        self.started = time.perf_counter()

    def __enter__(self) -> _Run:
        self._watch = asyncio.ensure_future(_watch_disconnect(self.request, self.cancel))
        return self

    def __exit__(self, *exc: object) -> None:
        self._watch.cancel()

    def done(self, result: GenerationResult) -> None:
        self.state.served += 1
        self.state.recent.append((result.completion_tokens, time.perf_counter() - self.started))


async def _prepare(request: web.Request, body: p.InferBody | p.ChatBody) -> Prepared:
    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    return await engine.prepare(p.to_generation_request(body))


async def _stream_events(run: _Run, prepared: Prepared, on_delta: Callable[[str], bytes],
                         on_end: Callable[[GenerationResult], list[bytes]],
                         first: bytes | None = None) -> web.StreamResponse:
    """Relay engine deltas as SSE. The response starts with the first delta, so an engine error
    before any output is still a proper JSON error response."""
    response: web.StreamResponse | None = None

    async def start() -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(run.request)
        if first:
            await resp.write(first)
        return resp

    stream: AsyncIterator[str | GenerationResult] = run.engine.stream(prepared, run.cancel)
    try:
        async for item in stream:
            if response is None:
                response = await start()
            if isinstance(item, str):
                await response.write(on_delta(item))
            else:
                run.done(item)
                for event in on_end(item):
                    await response.write(event)
        await response.write_eof()  # type: ignore[union-attr]
    except ConnectionResetError:  # the client went away mid-stream: routine, stop generating
        run.cancel.set()
        log.info("client disconnected during a stream of %s; generation stopped", run.request.path)
    except asyncio.CancelledError:
        run.cancel.set()
        raise
    except IIRError as e:
        if response is None:
            raise
        await response.write(p.sse(e.to_openai()))
    finally:
        await stream.aclose()  # type: ignore[attr-defined]  # stops the generation if still running
    # None only when the client left before the first byte: nothing can be sent anyway
    return response if response is not None else web.Response(status=499)


async def infer(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = p.parse_body(await _read_body(request, state.config.max_body), p.InferBody)
    prepared = await _prepare(request, body)
    model = request.app[ENGINE].model  # type: ignore[attr-defined]
    with state.admit(), _Run(request) as run:
        if not body.stream:
            result = await run.engine.generate(prepared, run.cancel)
            run.done(result)
            return _json(p.infer_response(result, model))
        return await _stream_events(
            run, prepared, lambda d: p.sse({"text": d}),
            lambda r: [p.sse({"finish_reason": r.finish_reason, "usage": r.usage(), "model": model}), p.sse("[DONE]")])


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    body = p.parse_body(await _read_body(request, state.config.max_body), p.ChatBody)
    if body.model != engine.model:
        raise ModelNotFoundError(f"model {body.model!r} is not served by this agent; it serves {engine.model!r}",
                                 param="model")
    prepared = await _prepare(request, body)
    cid, created = p.new_completion_id(), int(time.time())
    with state.admit(), _Run(request) as run:
        if not body.stream:
            result = await run.engine.generate(prepared, run.cancel)
            run.done(result)
            return _json(p.chat_response(result, engine.model, cid))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def end(r: GenerationResult) -> list[bytes]:
            events = [p.sse(p.chat_chunk(cid, engine.model, created, finish_reason=r.finish_reason))]
            if include_usage:
                events.append(p.sse(p.chat_chunk(cid, engine.model, created, usage=r.usage())))
            return [*events, p.sse("[DONE]")]

        return await _stream_events(
            run, prepared, lambda d: p.sse(p.chat_chunk(cid, engine.model, created, delta={"content": d})), end,
            first=p.sse(p.chat_chunk(cid, engine.model, created, delta={"role": "assistant", "content": ""})))


async def models(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    state = request.app[STATE]
    return _json({"object": "list", "data": [
        {"id": engine.model, "object": "model", "created": int(state.started), "owned_by": "iir-agent",
         "max_model_len": engine.context_window}]})


async def health(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    state = request.app[STATE]
    return _json(await health_report(engine, state))


async def health_report(engine: Engine, state: ServiceState) -> dict[str, Any]:
    load = await engine.load()
    in_flight = max(load.running, 0)
    report: dict[str, Any] = {
        "status": "ok", "model": engine.model, "engine": engine.kind, "device": engine.device,
        "context_window": engine.context_window, "queue_length": max(state.admitted - in_flight, load.waiting),
        "in_flight": in_flight, "max_queue": state.config.max_queue, "served": state.served,
        "tokens_per_second": state.tokens_per_second(),
    }
    if load.extra:
        report["engine_load"] = load.extra
    return report


def create_app(engine: Engine, config: AgentConfig) -> web.Application:
    """The agent app. The engine must be started (and is closed) by the caller."""
    app = web.Application(middlewares=[_errors], client_max_size=config.max_body)
    app[ENGINE] = engine
    app[STATE] = ServiceState(config)
    app.router.add_post("/infer", infer)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app
