"""Parse stage: read the body once (bounded by ``server.max_body`` and, when the client is still
sending it, by ``server.body_timeout``), decode JSON, check the fields the router itself relies
on. Everything else passes through to the backend untouched.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from iir.errors import BadRequestError, PayloadTooLargeError, RequestTimeoutError, UnsupportedMediaTypeError
from iir.pipeline.context import Next, RequestContext, Stage

__all__ = ["BODY_READS", "BodyReads", "make_stage", "parse_body", "read_body"]

_JSON_TYPES = frozenset({"application/json", "text/json"})
# field → (accepted python types, human name); checked only when present and not null.
_NUMBER = ((int, float), "a number")
_INT = ((int,), "an integer")
_COMMON: dict[str, tuple[tuple[type, ...], str]] = {
    "stream": ((bool,), "a boolean"),
    "temperature": _NUMBER, "top_p": _NUMBER, "presence_penalty": _NUMBER, "frequency_penalty": _NUMBER,
    "max_tokens": _INT, "max_completion_tokens": _INT, "n": _INT, "seed": _INT,
    "stop": ((str, list), "a string or a list of strings"),
    "stream_options": ((dict,), "an object"),
    "user": ((str,), "a string"),
}
_REQUIRED = {"chat": "messages", "completions": "prompt", "embeddings": "input"}


@dataclass(slots=True)
class BodyReads:
    """The body reads of one app that are waiting on their client. On shutdown :meth:`end`
    expires them at once (408), so the drain does not wait ``body_timeout`` for a stalled client."""

    closing: bool = False
    waiting: set[asyncio.Timeout] = field(default_factory=set)

    def end(self) -> None:
        self.closing = True
        now = asyncio.get_running_loop().time()
        for timeout in self.waiting:
            timeout.reschedule(now)


BODY_READS = web.AppKey("iir.body_reads", BodyReads)


async def read_body(request: web.Request, max_body: int, timeout: float | None = None,
                    reads: BodyReads | None = None) -> bytes:
    """The request body, refusing more than ``max_body`` bytes without reading them all.

    With ``timeout``, a body the client is still sending must arrive within that many seconds
    (else :class:`RequestTimeoutError`, 408). A body already fully received (the common case:
    small JSON arrives with the headers) is read without a timer."""
    if timeout is None or request.content.is_eof():
        return await _read(request, max_body)
    reads = reads if reads is not None else BodyReads()
    if reads.closing:
        raise RequestTimeoutError("the router is shutting down; the request body was not received",
                                  headers={"connection": "close"})
    cm = asyncio.timeout(timeout)
    reads.waiting.add(cm)
    try:
        async with cm:
            return await _read(request, max_body)
    except TimeoutError:
        if not cm.expired():
            raise
        why = ("the router is shutting down" if reads.closing
               else f"the request body did not arrive within {timeout:g}s (server.body_timeout)")
        raise RequestTimeoutError(f"{why}; send the whole body promptly",
                                  headers={"connection": "close"}) from None
    finally:
        reads.waiting.discard(cm)


async def _read(request: web.Request, max_body: int) -> bytes:
    length = request.content_length
    if length is not None:
        if not length:
            return b""  # readexactly(0) on an empty body raises IncompleteReadError
        if length > max_body:
            raise PayloadTooLargeError(f"request body is {length} bytes; the limit is {max_body}")
        try:
            return await request.content.readexactly(length)  # one read: no chunk loop, no copy
        except asyncio.IncompleteReadError as e:
            raise BadRequestError(f"request body ended after {len(e.partial)} of {length} bytes",
                                  code="invalid_json") from None
    buf = bytearray()
    async for chunk in request.content.iter_any():
        buf += chunk
        if len(buf) > max_body:
            raise PayloadTooLargeError(f"request body exceeds the limit of {max_body} bytes")
    return bytes(buf)


def _check_content_type(request: web.Request) -> None:
    if "content-type" not in request.headers:
        return  # lenient: a bare body is read as JSON
    ctype = request.content_type
    if ctype not in _JSON_TYPES and not ctype.endswith("+json"):
        raise UnsupportedMediaTypeError(f"content type {ctype!r} is not supported; send application/json")


def _type_error(name: str, expected: str) -> BadRequestError:
    return BadRequestError(f"'{name}' must be {expected}", param=name, code="invalid_type")


def parse_body(raw: bytes, endpoint: str) -> dict[str, Any]:
    """Decode and check a request body. Raises :class:`BadRequestError` with an OpenAI param."""
    if not raw:
        raise BadRequestError("request body is empty; send a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if "utf-8" in str(e).lower():
            raise BadRequestError("request body is not valid UTF-8", code="invalid_encoding") from None
        raise BadRequestError(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if model is None:
        raise BadRequestError("you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string")
    for name, (types, expected) in _COMMON.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, types) or (bool in types) != isinstance(value, bool)):
            raise _type_error(name, expected)
    required = _REQUIRED.get(endpoint)
    if required is not None and body.get(required) is None:
        raise BadRequestError(f"missing required parameter: '{required}'", param=required,
                              code="missing_required_parameter")
    if endpoint == "chat":
        _check_messages(body["messages"])
    return body


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list):
        raise _type_error("messages", "an array of message objects")
    if not messages:
        raise BadRequestError("'messages' must contain at least one message", param="messages",
                              code="invalid_value")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _type_error(f"messages[{i}]", "an object")
        if not isinstance(m.get("role"), str):
            raise _type_error(f"messages[{i}].role", "a string")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _type_error(f"messages[{i}].content", "a string or an array of content parts")


def make_stage(app: web.Application) -> Stage:
    reads = app.get(BODY_READS) or BodyReads()  # installed by the server app (ended on shutdown)

    async def parse(ctx: RequestContext, nxt: Next) -> web.StreamResponse:
        if not ctx.raw and not ctx.body:  # run_pipeline callers may hand in a parsed body
            http = ctx.http
            _check_content_type(http)
            server = ctx.table.server
            if http.content.is_eof():  # fast path: the whole body came with the headers
                ctx.raw = await _read(http, server.max_body)
            else:  # the client is still sending: bounded, and its time is not router overhead
                start = time.perf_counter()
                try:
                    ctx.raw = await read_body(http, server.max_body, server.body_timeout, reads)
                finally:
                    ctx.client_seconds = time.perf_counter() - start
            ctx.body = parse_body(ctx.raw, ctx.endpoint)
        ctx.model = ctx.body["model"]
        ctx.stream = bool(ctx.body.get("stream"))
        return await nxt(ctx)

    return parse
