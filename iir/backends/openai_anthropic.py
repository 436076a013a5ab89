"""OpenAI chat completions ⇄ Anthropic Messages API translation (client speaks OpenAI).

Pure functions (request, response, errors) and the adapter; the stream translator lives in
:mod:`iir.backends.openai_anthropic_stream`. Wire format: https://docs.anthropic.com/en/api/messages,
https://docs.anthropic.com/en/docs/build-with-claude/streaming, https://docs.anthropic.com/en/api/errors.

Choices worth knowing:
- every ``system``/``developer`` message is joined into the top-level ``system`` string;
- consecutive ``tool`` messages become one user turn of ``tool_result`` blocks;
- ``max_tokens`` defaults to :data:`DEFAULT_MAX_TOKENS` (Anthropic requires it);
- ``temperature`` is clamped to Anthropic's 0..1; with ``anthropic-version: 2026-10-21`` the
  sampling parameters are dropped (that version rejects them);
- unknown stream event types and block types are skipped (Anthropic's versioning policy
  says new ones may appear); missing fields and invalid JSON are a 502.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from iir.apischema.anthropic import API_VERSION_DEFAULT, API_VERSION_NO_SAMPLING
from iir.backends.base import Adapter, ClientRequest, StreamTranslator, UpstreamRequest
from iir.backends.openai_anthropic_stream import (
    PROVIDER,
    STOP_REASONS,
    AnthropicStreamTranslator,
    openai_usage,
    parse_json,
)
from iir.backends.provider_errors import malformed, upstream_http_error
from iir.errors import BadRequestError, UpstreamError
from iir.table import Backend

__all__ = [
    "ADAPTER",
    "DEFAULT_MAX_TOKENS",
    "STOP_REASONS",
    "AnthropicAdapter",
    "AnthropicStreamTranslator",
    "error_from_anthropic",
    "from_anthropic_response",
    "to_anthropic_request",
]

DEFAULT_MAX_TOKENS = 4096


# --------------------------------------------------------------------------- request


def _text_of(content: Any, param: str) -> str:
    """Plain text of an OpenAI content (string or list of text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequestError(f"only text parts are supported in {param}", param=param)
            out.append(str(part.get("text", "")))
        return "".join(out)
    raise BadRequestError(f"{param} must be a string or a list of parts", param=param)


def _image_block(part: dict[str, Any], param: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise BadRequestError("image_url.url is required", param=param)
    if url.startswith("data:"):
        head, sep, data = url.partition(",")
        media_type = head[5:].split(";", 1)[0]
        if not sep or ";base64" not in head or not media_type:
            raise BadRequestError("image data URLs must be data:<type>;base64,<data>", param=param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequestError(f"{param} must be a string or a list of parts", param=param)
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url":
            blocks.append(_image_block(part, f"{param}[{i}]"))
        else:
            raise BadRequestError(f"content part type {kind!r} is not supported by Anthropic backends",
                                  param=f"{param}[{i}]")
    return blocks


def _assistant_blocks(msg: dict[str, Any], param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = msg.get("content")
    if isinstance(content, list):  # text parts; refusal parts carry nothing to resend
        text = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    else:
        text = _text_of(content, f"{param}.content")
    if text:
        blocks.append({"type": "text", "text": text})
    for j, call in enumerate(msg.get("tool_calls") or []):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not fn.get("name") or not call.get("id"):
            raise BadRequestError("tool_calls need id and function.name", param=f"{param}.tool_calls[{j}]")
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            raise BadRequestError("tool call arguments must be JSON", param=f"{param}.tool_calls[{j}]") from None
        if not isinstance(args, dict):
            raise BadRequestError("tool call arguments must be a JSON object", param=f"{param}.tool_calls[{j}]")
        blocks.append({"type": "tool_use", "id": str(call["id"]), "name": str(fn["name"]), "input": args})
    return blocks


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add a turn, merging with the previous one of the same role (Anthropic alternates roles)."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        prev = messages[-1]["content"]
        # tool_result blocks must open a user turn: keep them ahead of text
        if role == "user" and blocks[0]["type"] == "tool_result" and prev and prev[-1]["type"] != "tool_result":
            messages.append({"role": role, "content": blocks})
            return
        prev.extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequestError("tools must be a list", param="tools")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise BadRequestError("only function tools with a name are supported", param=f"tools[{i}]")
        entry: dict[str, Any] = {"name": fn["name"],
                                 "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            entry["description"] = fn["description"]
        out.append(entry)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise BadRequestError("tool_choice must be auto, required, none or a named function", param="tool_choice")
    if parallel is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


def to_anthropic_request(body: Mapping[str, Any], model: str, *, sampling: bool = True) -> dict[str, Any]:
    """An OpenAI chat completions body as an Anthropic ``/v1/messages`` body for ``model``.

    ``sampling=False`` drops temperature/top_p (API version 2026-10-21 rejects them).
    Raises :class:`BadRequestError` for what Anthropic cannot express.
    """
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequestError("messages must be a non-empty list", param="messages")
    if (body.get("n") or 1) != 1:
        raise BadRequestError("n > 1 is not supported by Anthropic backends", param="n")
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for i, msg in enumerate(msgs):
        param = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            text = _text_of(msg.get("content"), f"{param}.content")
            if text:
                system.append(text)
        elif role == "user":
            _append(messages, "user", _user_blocks(msg.get("content"), f"{param}.content"))
        elif role == "assistant":
            _append(messages, "assistant", _assistant_blocks(msg, param))
        elif role == "tool":
            if not msg.get("tool_call_id"):
                raise BadRequestError("tool messages need tool_call_id", param=f"{param}.tool_call_id")
            result = {"type": "tool_result", "tool_use_id": str(msg["tool_call_id"]),
                      "content": _text_of(msg.get("content"), f"{param}.content")}
            _append(messages, "user", [result])
        else:
            raise BadRequestError(f"unsupported message role {role!r}", param=f"{param}.role")
    if not messages:
        raise BadRequestError("messages need at least one user or assistant message", param="messages")
    out: dict[str, Any] = {"model": model, "messages": messages,
                           "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
                           or DEFAULT_MAX_TOKENS}
    if system:
        out["system"] = "\n\n".join(system)
    if sampling and body.get("temperature") is not None:
        out["temperature"] = min(max(float(body["temperature"]), 0.0), 1.0)
    if sampling and body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and "tools" in out:
        out["tool_choice"] = choice
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise BadRequestError("response_format json modes are not supported by Anthropic backends",
                              param="response_format")
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    if body.get("stream"):
        out["stream"] = True
    return out


# --------------------------------------------------------------------------- response


def from_anthropic_response(data: bytes | str | Mapping[str, Any], *, model: str = "",
                            created: int | None = None) -> dict[str, Any]:
    """An Anthropic Message as an OpenAI ``chat.completion`` (raises a 502 if malformed)."""
    doc = parse_json(data, "the message")
    content = doc.get("content")
    if not isinstance(content, list):
        raise malformed(PROVIDER, "message without a 'content' list")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        if not isinstance(block, dict):
            raise malformed(PROVIDER, f"content[{i}] is not an object")
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            if not block.get("id") or not block.get("name"):
                raise malformed(PROVIDER, f"content[{i}] tool_use without id or name")
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"],
                                       "arguments": orjson.dumps(block.get("input") or {}).decode()}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    stop = doc.get("stop_reason")
    out: dict[str, Any] = {
        "id": str(doc.get("id") or "msg"), "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model or str(doc.get("model") or ""),
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": STOP_REASONS.get(stop, "stop") if stop else ("tool_calls" if calls else "stop")}],
    }
    usage = openai_usage(doc.get("usage"))
    if usage:
        out["usage"] = usage
    return out


def error_from_anthropic(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> UpstreamError:
    """The typed error for an HTTP error answer (``{"type": "error", "error": {type, message}}``)."""
    kind, message = None, ""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        kind = doc["error"].get("type")
        message = str(doc["error"].get("message") or "")
    elif body:
        message = body[:200].decode("utf-8", errors="replace")
    return upstream_http_error(PROVIDER, status, message, upstream_type=kind, headers=headers)


# --------------------------------------------------------------------------- adapter


@dataclass(slots=True)
class _Stream(StreamTranslator):
    inner: AnthropicStreamTranslator = field(default_factory=AnthropicStreamTranslator)

    def feed(self, block: bytes) -> list[bytes]:
        out = self.inner.feed(block)
        self._sync()
        return [out] if out else []

    def finish(self) -> list[bytes]:
        out = self.inner.close()
        self._sync()
        return [out] if out else []

    def _sync(self) -> None:
        self.usage, self.finish_reason, self.done = self.inner.usage, self.inner.finish_reason, self.inner.done


def messages_url(base_url: str) -> str:
    """``{base}/v1/messages``; a base that already ends in ``/v1`` is accepted too."""
    base = base_url.rstrip("/")
    return base + ("/messages" if base.endswith("/v1") else "/v1/messages")


class AnthropicAdapter(Adapter):
    """``kind: anthropic`` backends: ``POST {base}/v1/messages`` with ``x-api-key``.

    ``anthropic-version`` defaults to :data:`API_VERSION_DEFAULT`; a backend's ``headers`` may
    set another (with 2026-10-21 or later, temperature/top_p are not sent).
    """

    protocol = "anthropic"
    endpoints = frozenset({"chat"})

    def build(self, req: ClientRequest, backend: Backend) -> UpstreamRequest:
        if req.endpoint != "chat":
            raise self.unsupported(req, backend)
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION_DEFAULT}
        headers.update((k.lower(), v) for k, v in backend.headers)
        if req.stream:
            headers["accept"] = "text/event-stream"
        if backend.api_key:
            headers["x-api-key"] = backend.api_key
        sampling = headers["anthropic-version"] < API_VERSION_NO_SAMPLING
        body = to_anthropic_request(req.body, backend.upstream_model(req.model), sampling=sampling)
        body["stream"] = req.stream
        return UpstreamRequest("POST", messages_url(backend.base_url), headers, orjson.dumps(body), req.stream)

    def translate_response(self, req: ClientRequest, backend: Backend, body: bytes) -> tuple[bytes, dict[str, int]]:
        out = from_anthropic_response(body, model=req.model)
        usage = {k: v for k, v in out.get("usage", {}).items() if isinstance(v, int)}
        return orjson.dumps(out), usage

    def stream_translator(self, req: ClientRequest, backend: Backend) -> StreamTranslator:
        options = req.body.get("stream_options")
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        return _Stream(inner=AnthropicStreamTranslator(model=req.model, include_usage=include_usage))

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return error_from_anthropic(status, body, headers)


ADAPTER = AnthropicAdapter()
