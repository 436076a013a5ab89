"""The observe stage: times each request and, once it is over, writes exactly one log event and
updates the metrics.

It must be the outermost stage of the chain so that it sees every outcome: answers from inner
stages (401, 429, cache hits), finished streams (the relay returns after the last chunk), errors
raised through it (their status is taken from the typed error) and client disconnects (``499``).
It never changes the response and never swallows an exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from iir.errors import IIRError
from iir.observability.logging import emit
from iir.observability.metrics import METRICS_KEY, NONE, Metrics, RequestSample
from iir.pipeline.context import Next, RequestContext, Stage

__all__ = ["CLIENT_CLOSED", "REQUEST_LOGGER", "make_stage", "observe_stage", "request_fields"]

REQUEST_LOGGER = "iir.request"  # the logger of the per-request event
CLIENT_CLOSED = 499  # the client went away before the answer was complete (nginx's convention)
_MAX_MODEL_CHARS = 200


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def request_fields(ctx: RequestContext, status: int, error: str, seconds: float,
                   ttft: float | None, overhead: float) -> dict[str, Any]:
    """The fields of the ``request`` log event (documented in docs/observability.md)."""
    usage = ctx.usage
    return {
        "request_id": ctx.request_id,
        "endpoint": ctx.endpoint,
        "key": ctx.key.name if ctx.key is not None else None,
        "model": ctx.model[:_MAX_MODEL_CHARS] or None,
        "stream": ctx.stream,
        "route": ctx.route.name if ctx.route is not None else None,
        "backend": ctx.backend,
        "status": status,
        "error": error or None,
        "attempts": [{"backend": a.backend, "status": a.status, "error": a.error or None,
                      "ms": _ms(a.seconds)} for a in ctx.attempts],
        "latency_ms": _ms(seconds),
        "ttft_ms": _ms(ttft),
        "upstream_ms": _ms(ctx.upstream_seconds),
        "overhead_ms": _ms(overhead),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cache": ctx.cache,
        "ratelimit": ctx.ratelimit,
    }


def _error_code(ctx: RequestContext, status: int) -> str:
    if ctx.error:
        return ctx.error
    return f"http_{status}" if status >= 400 else ""


def observe_stage(metrics: Metrics, logger: logging.Logger) -> Stage:
    """Build the stage for one application's metrics and logger."""
    in_flight = metrics.in_flight

    def finish(ctx: RequestContext, status: int, error: str) -> None:
        end = time.perf_counter()
        seconds = end - ctx.started
        ttft = ctx.first_byte_at - ctx.started if ctx.stream and ctx.first_byte_at is not None else None
        overhead = max(0.0, seconds - ctx.upstream_seconds - ctx.client_seconds)
        route = ctx.route.name if ctx.route is not None else NONE
        backend = ctx.backend or NONE
        usage = ctx.usage
        metrics.observe(RequestSample(
            model=metrics.model_label(ctx.table, ctx.model, status < 400 and not error),
            route=route, backend=backend, status=status, seconds=seconds, ttft=ttft, overhead=overhead,
            prompt_tokens=usage.get("prompt_tokens", 0) or 0,
            completion_tokens=usage.get("completion_tokens", 0) or 0,
            cache=ctx.cache, ratelimit=ctx.ratelimit, key=ctx.key.name if ctx.key is not None else "anonymous",
            error=error, attempts=tuple((a.backend, "ok" if not a.error else a.error) for a in ctx.attempts)))
        level = logging.WARNING if status >= 500 or (error and status < 400) else logging.INFO
        if logger.isEnabledFor(level):
            emit(logger, level, "request", request_fields(ctx, status, error, seconds, ttft, overhead))

    async def observe(ctx: RequestContext, nxt: Next) -> web.StreamResponse:
        in_flight.inc()
        status, error = 500, "internal_error"
        try:
            response = await nxt(ctx)
            status = response.status
            error = _error_code(ctx, status)
            return response
        except IIRError as exc:
            status, error = exc.status, ctx.error or exc.code or exc.type
            raise
        except web.HTTPException as exc:
            status, error = exc.status, ctx.error or (f"http_{exc.status}" if exc.status >= 400 else "")
            raise
        except asyncio.CancelledError:
            status, error = CLIENT_CLOSED, "client_closed"
            raise
        except ConnectionResetError:
            status, error = CLIENT_CLOSED, "client_closed"
            raise
        finally:
            in_flight.dec()
            finish(ctx, status, error)

    return observe


def make_stage(app: web.Application) -> Stage:
    """Stage factory for :mod:`iir.pipeline.chain`: the app's :class:`Metrics` (installed by
    :func:`iir.server.metrics_api.setup`) and the ``iir.request`` logger."""
    return observe_stage(app[METRICS_KEY], logging.getLogger(REQUEST_LOGGER))
