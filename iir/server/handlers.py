"""The HTTP boundary: builds the RequestContext, runs the pipeline, turns errors into
OpenAI's error JSON. Nothing below this module writes an error response.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from iir.errors import BadRequestError, IIRError
from iir.pipeline.context import Next, RequestContext
from iir.server.state import TABLE_STATE

__all__ = ["CHAIN", "HeaderTooLargeError", "error_body", "error_response", "handler_for", "request_id", "run_pipeline"]

log = logging.getLogger("iir.server")

CHAIN: web.AppKey[Next] = web.AppKey("iir.chain", Next)  # type: ignore[arg-type]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class HeaderTooLargeError(BadRequestError):
    status = 431
    code = "request_header_too_large"


def request_id(request: web.Request, ids: Iterator[str] | None = None) -> str:
    """The client's ``x-request-id`` when it is sane, else a new one (from ``ids`` if given)."""
    incoming = request.headers.get("x-request-id")
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return next(ids) if ids is not None else secrets.token_hex(12)


def request_ids() -> Iterator[str]:
    """Unique request ids without a syscall each: a random per-process prefix and a counter."""
    prefix = secrets.token_hex(6)
    return (f"{prefix}{n:08x}" for n in itertools.count(1))


def error_body(e: IIRError) -> bytes:
    return orjson.dumps(e.to_openai())


def error_response(e: IIRError, headers: dict[str, str] | None = None, egress: Any = None) -> web.Response:
    body = error_body(e)
    if egress is not None:
        body = egress.translate_body(e.status, body)
    out = web.Response(body=body, status=e.status, content_type="application/json")
    if headers:
        out.headers.update(headers)
    out.headers.update(e.headers)
    return out


async def _run(ctx: RequestContext, chain: Next) -> web.StreamResponse:
    try:
        return await chain(ctx)
    except IIRError as e:
        ctx.status = ctx.status if ctx.status >= 400 else e.status
        headers = dict(ctx.response_headers)
        headers["x-iir-attempts"] = str(len(ctx.attempts))
        headers["x-iir-overhead-ms"] = f"{ctx.overhead_ms:.2f}"
        return error_response(e, headers, ctx.extras.get("egress"))


def handler_for(endpoint: str):
    """The aiohttp handler for one OpenAI endpoint (chat, completions, embeddings)."""

    ids = request_ids()

    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        rid = request_id(request, ids)
        ctx = RequestContext(http=request, table=app[TABLE_STATE].table, request_id=rid, endpoint=endpoint)
        ctx.response_headers["x-request-id"] = rid
        return await _run(ctx, app[CHAIN])

    return handle


async def run_pipeline(request: web.Request, *, endpoint: str, body: dict[str, Any],
                       egress: Any = None) -> web.StreamResponse:
    """Run the pipeline on an already-translated OpenAI body (e.g. Anthropic ``/v1/messages``).

    ``endpoint="messages"`` is served as chat (``ctx.extras["ingress"]`` keeps the name);
    ``egress`` (``translate_body``/``translate_stream``/``finish_stream``) re-encodes every
    byte sent to the client, errors included."""
    app = request.app
    rid = request_id(request)
    wire = "chat" if endpoint == "messages" else endpoint
    ctx = RequestContext(http=request, table=app[TABLE_STATE].table, request_id=rid, endpoint=wire,
                         raw=orjson.dumps(body), body=body)
    ctx.extras["ingress"] = endpoint
    if egress is not None:
        ctx.extras["egress"] = egress
    ctx.response_headers["x-request-id"] = rid
    return await _run(ctx, app[CHAIN])
