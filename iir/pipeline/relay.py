"""Relay stage: send the request to each candidate in turn and stream the answer back.

Fallback to the next candidate on a connection error, a timeout before the first byte, a
5xx or a 429 (``Retry-After`` is honoured when it fits in the first-byte budget); never
once a byte has reached the client. After that, a failure ends the stream with an SSE error
event, which the official openai SDK raises. Every try is recorded in ``ctx.attempts``.

Per-backend timeouts: ``connect`` (TCP/TLS), ``first_byte`` (request sent → first body line
that is not an SSE comment for streams, → response headers otherwise), ``idle`` (between
stream chunks) and ``total``.
The server runs with ``handler_cancellation``: a client that goes away cancels this task, and
the ``finally`` blocks close the upstream connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from iir.backends.base import Adapter, UpstreamRequest, sse_error
from iir.backends.credentials import mask_secrets, mask_secrets_bytes
from iir.errors import IIRError, NoBackendError, RateLimitedError, UpstreamError, UpstreamTimeoutError
from iir.observability.metrics import METRICS_KEY, Metrics
from iir.pipeline.context import Attempt, Next, RequestContext, Stage
from iir.pipeline.services import SERVICES, Services
from iir.policies.health import BackendBusyError, HealthBoard
from iir.policies.runtime import POLICIES
from iir.table import Backend, Timeouts

__all__ = ["make_stage", "response_headers"]

_SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}


class _SSEResponse(web.StreamResponse):
    """A client stream whose headers leave with its first bytes (one send, not two): the relay
    prepares it only when it has a chunk to write, so nothing waits. (aiohttp >= 3.12 reads this
    class attribute; older versions send the headers at once, as before.)"""

    _send_headers_immediately = False


class _Retry(Exception):
    """An attempt failed before any byte reached the client: try the next candidate."""

    def __init__(self, error: IIRError) -> None:
        super().__init__(error.message)
        self.error = error


def response_headers(ctx: RequestContext) -> dict[str, str]:
    """Headers every proxied response carries (route, backend, attempts, overhead + stages')."""
    headers = dict(ctx.response_headers)
    if ctx.backend:
        headers["x-iir-backend"] = ctx.backend
    headers["x-iir-attempts"] = str(len(ctx.attempts))
    headers["x-iir-overhead-ms"] = f"{ctx.overhead_ms:.2f}"
    return headers


def _client_timeout(services: Services, t: Timeouts) -> aiohttp.ClientTimeout:
    timeout = services.timeouts.get(t)
    if timeout is None:
        timeout = services.timeouts[t] = aiohttp.ClientTimeout(total=None, connect=t.connect, sock_connect=t.connect)
    return timeout


async def _open(ctx: RequestContext, services: Services, backend: Backend, up: UpstreamRequest,
                attempt: Attempt) -> aiohttp.ClientResponse:
    """Send the request; returns once response headers arrived. Failures are retryable."""
    t = backend.timeouts
    start = time.perf_counter()
    connector, token = services.connector, None
    try:
        # Until the connection is up: connect + first_byte (connect itself is bounded by aiohttp);
        # the connector then moves the deadline to first_byte from sending the request.
        async with asyncio.timeout(min(t.connect + t.first_byte, t.total)) as deadline:
            if connector is not None:
                token = connector.first_byte.set((deadline, t.first_byte))
            return await services.http.request(up.method, up.url, data=up.body, headers=up.headers,
                                               timeout=_client_timeout(services, t), allow_redirects=False)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
        attempt.error = "connect"
        raise _Retry(UpstreamError(f"cannot connect to backend {backend.name!r}: {e}", retryable=True)) from None
    except TimeoutError:
        attempt.error = "timeout"
        raise _Retry(UpstreamTimeoutError(
            f"backend {backend.name!r} sent no response within {t.first_byte:g}s", retryable=True)) from None
    except aiohttp.ClientError as e:
        attempt.error = "connection"
        raise _Retry(UpstreamError(f"backend {backend.name!r} failed: {e or type(e).__name__}",
                                   retryable=True)) from None
    finally:
        if token is not None and connector is not None:
            connector.first_byte.reset(token)
        attempt.seconds = time.perf_counter() - start
        ctx.upstream_seconds += attempt.seconds


async def _read_body(ctx: RequestContext, backend: Backend, resp: aiohttp.ClientResponse, budget: float) -> bytes:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(max(budget, 0.001)):
            return await resp.read()
    except TimeoutError:
        raise UpstreamTimeoutError(f"backend {backend.name!r} did not finish its response in time",
                                   retryable=False) from None
    except aiohttp.ClientError as e:
        raise UpstreamError(f"backend {backend.name!r} broke off its response: {e or type(e).__name__}",
                            retryable=True) from None
    finally:
        ctx.upstream_seconds += time.perf_counter() - start


def _known_backends(ctx: RequestContext) -> tuple[Backend, ...]:
    """Every backend of the request's table, and registered agents among the candidates."""
    return (*ctx.table.backends.values(), *(c.backend for c in ctx.candidates if c.backend.dynamic))


def _mask_credentials(ctx: RequestContext, message: str) -> str:
    """An upstream may echo the credentials it received: never surface any of ours."""
    return mask_secrets(message, _known_backends(ctx))


def _upstream_error(adapter: Adapter, status: int, body: bytes, headers: Any, backend: Backend) -> UpstreamError:
    err = adapter.error(status, body, headers)
    seen = err.upstream_status or status  # the adapter may know better (e.g. a 400 that means "bad key")
    if 400 <= seen < 500 and seen not in (401, 402, 403, 407, 408, 429):  # 402: the router's account
        err.status = seen  # the client's request was refused upstream: relay its status
        err.type = "invalid_request_error"
    err.message = f"backend {backend.name!r}: {err.message}"
    return err


async def _blocks(ctx: RequestContext, backend: Backend, content: aiohttp.StreamReader,
                  deadline: float) -> AsyncIterator[bytes]:
    """Whole-line blocks of the upstream body, under the first-byte, idle and total limits.

    The first-byte limit runs from the start of the body until a line that is not an SSE
    comment arrives: keep-alive comments (``: OPENROUTER PROCESSING``) do not stop it."""
    t = backend.timeouts
    first_by = time.perf_counter() + t.first_byte
    begun = False
    pending = b""
    while True:
        start = time.perf_counter()
        remaining = deadline - start
        limit, what = (t.idle, "idle") if begun else (first_by - start, "first byte")
        try:
            async with asyncio.timeout(max(min(limit, remaining), 0.001)):
                chunk = await content.readany()
        except TimeoutError:
            what = what if limit < remaining else "total"
            raise UpstreamTimeoutError(f"backend {backend.name!r} stream timed out ({what})",
                                       retryable=what == "first byte") from None
        except aiohttp.ClientError as e:
            raise UpstreamError(f"backend {backend.name!r} broke off the stream: {e or type(e).__name__}",
                                retryable=True) from None
        finally:
            ctx.upstream_seconds += time.perf_counter() - start
        if not chunk:
            if pending:
                yield pending + b"\n"
            return
        pending += chunk
        cut = pending.rfind(b"\n")
        if cut >= 0:
            block, pending = pending[: cut + 1], pending[cut + 1:]
            if not begun:
                begun = not _comments_only(block)
            yield block


def _comments_only(block: bytes) -> bool:
    """True when every line of ``block`` is an SSE comment or blank."""
    return all(not line.strip() or line.startswith(b":") for line in block.split(b"\n"))


async def _write(ctx: RequestContext, out: web.StreamResponse, data: bytes) -> None:
    capture = ctx.extras.get("capture")
    if capture is not None:
        capture.feed(data)
    egress = ctx.extras.get("egress")
    if egress is not None:
        data = egress.translate_stream(data)
        if not data:
            return
    await out.write(data)


async def _finish_client_stream(ctx: RequestContext, out: web.StreamResponse) -> None:
    egress = ctx.extras.get("egress")
    if egress is not None:
        tail = egress.finish_stream()
        if tail:
            await out.write(tail)
    await out.write_eof()


async def _relay_stream(ctx: RequestContext, adapter: Adapter, backend: Backend,
                        resp: aiohttp.ClientResponse, deadline: float) -> web.StreamResponse:
    translator = adapter.stream_translator(ctx, backend)
    out: web.StreamResponse | None = None
    try:
        async for block in _blocks(ctx, backend, resp.content, deadline):
            chunks = translator.feed(block)
            if chunks and any(chunks):
                if out is None:
                    ctx.backend, ctx.status = backend.name, 200
                    out = _SSEResponse(status=200, headers={**_SSE_HEADERS, **response_headers(ctx)})
                    await out.prepare(ctx.http)
                    ctx.first_byte_at = time.perf_counter()
                for chunk in chunks:
                    if b'"error"' in chunk:  # an upstream's in-stream error event may echo our credentials
                        chunk = mask_secrets_bytes(chunk, _known_backends(ctx))
                    await _write(ctx, out, chunk)
            if translator.error is not None:
                raise translator.error
        if not translator.done and adapter.passthrough(ctx, backend):
            raise UpstreamError(f"backend {backend.name!r} ended the stream without [DONE]",
                                retryable=out is None)  # nothing reached the client: fall back
        if out is None:  # an empty but complete stream: still a valid (empty) answer
            ctx.backend, ctx.status = backend.name, 200
            out = _SSEResponse(status=200, headers={**_SSE_HEADERS, **response_headers(ctx)})
            await out.prepare(ctx.http)
        for chunk in translator.finish():
            await _write(ctx, out, chunk)
        ctx.usage = translator.usage
        await _finish_client_stream(ctx, out)
        return out
    except UpstreamError as e:
        if out is None:
            raise _Retry(e) if e.retryable else e from None
        resp.close()  # the upstream connection is in an unknown state: never reuse it
        return await _fail_stream(ctx, out, e)


async def _fail_stream(ctx: RequestContext, out: web.StreamResponse, e: UpstreamError) -> web.StreamResponse:
    """A failure after bytes reached the client: end the stream with an SSE error event."""
    ctx.error = e.code or "upstream_error"
    e.message = _mask_credentials(ctx, e.message)
    ctx.extras["stream_error"] = e.message
    await _write(ctx, out, sse_error(e.message, type_=e.type, code=e.code))
    await _finish_client_stream(ctx, out)
    return out


async def _attempt(ctx: RequestContext, services: Services, backend: Backend) -> web.StreamResponse:
    adapter = services.adapters[backend.protocol]
    up = adapter.build(ctx, backend)
    attempt = Attempt(backend.name)
    ctx.attempts.append(attempt)
    deadline = time.perf_counter() + backend.timeouts.total
    resp = await _open(ctx, services, backend, up, attempt)
    consumed = False
    try:
        attempt.status = resp.status
        if resp.status >= 300:
            attempt.error = f"http_{resp.status}"
            body = await _read_body(ctx, backend, resp, min(backend.timeouts.idle, deadline - time.perf_counter()))
            err = _upstream_error(adapter, resp.status, body, resp.headers, backend)
            raise _Retry(err) if err.retryable else err
        if up.stream:
            result = await _relay_stream(ctx, adapter, backend, resp, deadline)
        else:
            try:
                body = await _read_body(ctx, backend, resp, deadline - time.perf_counter())
            except UpstreamError as e:
                attempt.error = "body"
                raise _Retry(e) if e.retryable else e from None
            result = _json_response(ctx, backend, *adapter.translate_response(ctx, backend, body))
        consumed = True
        return result
    except _Retry as r:
        attempt.error = attempt.error or r.error.code or "error"
        raise
    finally:
        attempt.seconds = time.perf_counter() - (deadline - backend.timeouts.total)
        if consumed:
            resp.release()
        else:
            resp.close()  # unread or abandoned (client gone): drop the upstream connection now


async def _tracked(ctx: RequestContext, hooks: _Hooks, backend: Backend) -> web.StreamResponse:
    """One attempt under the health board (max_inflight slot, circuit stats) and in-flight gauge."""
    health, gauge = hooks.health, hooks.inflight(backend.name)
    verdict: bool | None = None  # None: ended without a verdict (client went away)
    n = len(ctx.attempts)
    try:
        # no max_inflight: skip the slot's async context manager (a generator per request)
        async with health.slot(backend) if health is not None and backend.max_inflight is not None \
                else contextlib.nullcontext():
            if health is not None:
                health.started(backend.name)
            if gauge is not None:
                gauge.inc()
            try:
                result = await _attempt(ctx, hooks.services, backend)
                verdict = True
                return result
            except _Retry as r:
                verdict = not isinstance(r.error, UpstreamError) or (
                    r.error.upstream_status is not None and r.error.upstream_status < 500)
                raise
            except UpstreamError as e:  # non-retryable: the backend answered, the request was refused
                verdict = e.upstream_status is not None and e.upstream_status < 500
                raise
            finally:
                if gauge is not None:
                    gauge.dec()
                if health is not None:
                    if verdict is None:
                        health.cancelled(backend.name)
                    else:
                        a = ctx.attempts[n] if len(ctx.attempts) > n else None
                        ttft = (ctx.first_byte_at - ctx.started) if verdict and ctx.first_byte_at else None
                        health.finished(backend.name, verdict, ttft=ttft, seconds=a.seconds if a else None)
    except BackendBusyError as e:
        ctx.attempts.append(Attempt(backend.name, error="busy"))
        raise _Retry(e) from None


def _json_response(ctx: RequestContext, backend: Backend, body: bytes, usage: dict[str, int]) -> web.Response:
    ctx.backend, ctx.status, ctx.usage = backend.name, 200, usage
    capture = ctx.extras.get("capture")
    if capture is not None:
        capture.feed(body)
    egress = ctx.extras.get("egress")
    if egress is not None:
        body = egress.translate_body(200, body)
    return web.Response(body=body, status=200, content_type="application/json", headers=response_headers(ctx))


def _final_error(ctx: RequestContext, errors: list[IIRError]) -> IIRError:
    if not errors:
        return NoBackendError(f"no routable backend for model {ctx.model!r}")
    if len(errors) == 1:
        return errors[0]
    if all(getattr(e, "upstream_status", None) == 429 for e in errors):
        retry = min((getattr(e, "retry_after", None) or 1.0) for e in errors)
        return RateLimitedError("every backend of this route is rate limited: "
                                + "; ".join(e.message for e in errors),
                                headers={"retry-after": str(max(1, round(retry)))})
    last = errors[-1]
    summary = f"all {len(errors)} backends failed: " + "; ".join(e.message for e in errors)
    if all(isinstance(e, BackendBusyError) for e in errors):
        return BackendBusyError(summary)
    if all(isinstance(e, UpstreamError) and e.status == 503 for e in errors):  # all overloaded / unavailable
        unavailable = UpstreamError(summary, upstream_status=getattr(last, "upstream_status", None))
        unavailable.status, unavailable.type = 503, "service_unavailable"
        return unavailable
    cls = UpstreamTimeoutError if isinstance(last, UpstreamTimeoutError) else UpstreamError
    return cls(summary, upstream_status=getattr(last, "upstream_status", None))


@dataclass(frozen=True, slots=True)
class _Hooks:
    services: Services
    health: HealthBoard | None
    metrics: Metrics | None

    def inflight(self, backend: str) -> Any:
        return self.metrics.backend_inflight(backend) if self.metrics is not None else None


async def _relay(ctx: RequestContext, hooks: _Hooks) -> web.StreamResponse:
    try:
        return await _relay_candidates(ctx, hooks)
    except IIRError as e:  # the only way an upstream's error text leaves the router (but _fail_stream)
        e.message = _mask_credentials(ctx, e.message)
        raise


async def _relay_candidates(ctx: RequestContext, hooks: _Hooks) -> web.StreamResponse:
    errors: list[IIRError] = []
    kept = [c.backend for c in ctx.candidates if c.kept]
    for backend in kept:
        try:
            return await _tracked(ctx, hooks, backend)
        except _Retry as r:
            errors.append(r.error)
    last = errors[-1] if errors else None
    retry_after = getattr(last, "retry_after", None)
    if last is not None and retry_after is not None and kept:
        backend = kept[-1]
        elapsed = time.perf_counter() - ctx.started
        if retry_after + elapsed <= backend.timeouts.first_byte:
            await asyncio.sleep(retry_after)
            try:
                return await _tracked(ctx, hooks, backend)
            except _Retry as r:
                errors.append(r.error)
    raise _final_error(ctx, errors)


def make_stage(app: web.Application) -> Stage:
    policies = app.get(POLICIES)
    hooks = _Hooks(app[SERVICES], policies.health if policies is not None else None, app.get(METRICS_KEY))

    async def relay(ctx: RequestContext, nxt: Next) -> web.StreamResponse:
        return await _relay(ctx, hooks)

    return relay
