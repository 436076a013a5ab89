"""Parse stage: read the body once (bounded by ``server.max_body``), decode JSON, check the
fields the router itself relies on. Everything else passes through to the backend untouched.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from iir.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from iir.pipeline.context import Next, RequestContext, Stage

__all__ = ["make_stage", "parse_body", "read_body"]

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


async def read_body(request: web.Request, max_body: int) -> bytes:
    """The request body, refusing more than ``max_body`` bytes without reading them all."""
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


async def _parse(ctx: RequestContext, nxt: Next) -> web.StreamResponse:
    if not ctx.raw and not ctx.body:  # run_pipeline callers may hand in a parsed body
        _check_content_type(ctx.http)
        ctx.raw = await read_body(ctx.http, ctx.table.server.max_body)
        ctx.body = parse_body(ctx.raw, ctx.endpoint)
    ctx.model = ctx.body["model"]
    ctx.stream = bool(ctx.body.get("stream"))
    return await nxt(ctx)


def make_stage(app: web.Application) -> Stage:
    return _parse
