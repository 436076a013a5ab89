"""``POST /v1/messages``: the Anthropic Messages API in front of the same routing pipeline.

The body is translated to an OpenAI chat request (:func:`iir.backends.anthropic_openai.to_openai_request`)
and run through exactly the pipeline of ``/v1/chat/completions`` (auth, limits, routing,
cache, fallback, any backend kind) via :func:`iir.server.handlers.run_pipeline` with the
endpoint tag ``messages``. An :class:`~iir.backends.anthropic_openai.AnthropicEgress` re-encodes
every byte sent back: Anthropic messages, Anthropic stream events, Anthropic error bodies.
Clients authenticate with ``x-api-key`` or ``Authorization: Bearer`` (both SDK generations).

``POST /v1/messages/count_tokens`` answers ``{"input_tokens": n}`` from the router's own token
counter (the one routing rules and rate limits use): an estimate, not Claude's tokenizer.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from iir.backends.anthropic_openai import AnthropicEgress, to_openai_request
from iir.errors import BadRequestError, IIRError, PermissionDeniedError, UnsupportedMediaTypeError
from iir.pipeline.auth import presented_key, resolve_key
from iir.pipeline.parse import BODY_READS, read_body
from iir.policies.runtime import POLICIES
from iir.policies.tokens import TokenCounter
from iir.server.handlers import error_response, request_id, run_pipeline
from iir.server.state import TABLE_STATE

__all__ = ["handle_count_tokens", "handle_messages", "setup"]


async def _anthropic_body(request: web.Request) -> dict[str, object]:
    if "content-type" in request.headers and not request.content_type.endswith("json"):
        raise UnsupportedMediaTypeError(f"content type {request.content_type!r} is not supported; send application/json")
    server = request.app[TABLE_STATE].table.server
    raw = await read_body(request, server.max_body, server.body_timeout, request.app.get(BODY_READS))
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequestError(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object", code="invalid_json")
    return body


async def handle_messages(request: web.Request) -> web.StreamResponse:
    """An Anthropic Messages request, routed like a chat completion, answered in Anthropic's format."""
    egress = AnthropicEgress(model="")
    try:
        body = await _anthropic_body(request)
        egress.model = str(body.get("model") or "")
        chat = to_openai_request(body)
    except IIRError as e:  # rejected before the pipeline: answer here, in Anthropic's shape
        return error_response(e, {"x-request-id": request_id(request)}, egress)
    return await run_pipeline(request, endpoint="messages", body=chat, egress=egress)


async def handle_count_tokens(request: web.Request) -> web.StreamResponse:
    """``{"input_tokens": n}`` for an Anthropic Messages request (same auth and model rules)."""
    egress = AnthropicEgress(model="")
    try:
        body = await _anthropic_body(request)
        egress.model = model = str(body.get("model") or "")
        chat = to_openai_request({**body, "max_tokens": 1})  # count_tokens requests carry no max_tokens
        key = resolve_key(request.app[TABLE_STATE].table.auth, presented_key(request))
        if key is not None and not key.allows(model):
            raise PermissionDeniedError(f"this API key may not use model {model!r}", param="model")
        services = request.app.get(POLICIES)
        counter = services.tokens if services is not None else TokenCounter()
        count = counter.count_request(chat, "chat", model)
    except IIRError as e:
        return error_response(e, {"x-request-id": request_id(request)}, egress)
    return web.Response(body=orjson.dumps({"input_tokens": count}), content_type="application/json")


def setup(app: web.Application) -> None:
    """Add ``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` to the router app."""
    app.router.add_post("/v1/messages", handle_messages)
    app.router.add_post("/v1/messages/count_tokens", handle_count_tokens)
