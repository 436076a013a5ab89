"""Anthropic Messages clients ⇄ OpenAI chat completions (the ``POST /v1/messages`` ingress).

The ingress turns an Anthropic request into an OpenAI chat body, runs the normal pipeline,
and :class:`AnthropicEgress` turns whatever the pipeline sends back (OpenAI JSON, OpenAI SSE,
OpenAI error envelopes) into the Anthropic wire format. Wire format:
https://docs.anthropic.com/en/api/messages, https://docs.anthropic.com/en/docs/build-with-claude/streaming,
https://docs.anthropic.com/en/api/errors.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from iir.backends.jsonval import as_dict, as_int, as_list
from iir.backends.sse_reader import SSEDecoder
from iir.errors import BadRequestError

__all__ = [
    "FINISH_REASONS",
    "AnthropicEgress",
    "anthropic_error",
    "from_openai_response",
    "to_openai_request",
]

FINISH_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                  "content_filter": "refusal"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error", 504: "timeout_error"}





# --------------------------------------------------------------------------- request


def _text(blocks: Any, param: str) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise BadRequestError(f"{param} must be a string or a list of blocks", param=param)
    return "".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text")


def _image_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    src = block.get("source")
    if isinstance(src, dict) and src.get("type") == "base64" and src.get("media_type") and src.get("data"):
        return {"type": "image_url", "image_url": {"url": f"data:{src['media_type']};base64,{src['data']}"}}
    if isinstance(src, dict) and src.get("type") == "url" and src.get("url"):
        return {"type": "image_url", "image_url": {"url": src["url"]}}
    raise BadRequestError("image blocks need a base64 or url source", param=f"{param}.source")


def _user_messages(content: Any, param: str) -> list[dict[str, Any]]:
    """One Anthropic user turn as OpenAI messages: tool results first, then the user's parts."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise BadRequestError(f"{param} must be a string or a list of blocks", param=param)
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        where = f"{param}[{i}]"
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image_part(block, where))
        elif kind == "tool_result":
            if not block.get("tool_use_id"):
                raise BadRequestError("tool_result needs tool_use_id", param=f"{where}.tool_use_id")
            text = _text(block.get("content", ""), f"{where}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            out.append({"role": "tool", "tool_call_id": str(block["tool_use_id"]), "content": text})
        else:
            raise BadRequestError(f"content block type {kind!r} is not supported", param=where)
    if parts:
        simple = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if simple else parts})
    return out


def _assistant_message(content: Any, param: str) -> dict[str, Any] | None:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise BadRequestError(f"{param} must be a string or a list of blocks", param=param)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            if not block.get("id") or not block.get("name"):
                raise BadRequestError("tool_use needs id and name", param=f"{param}[{i}]")
            calls.append({"id": str(block["id"]), "type": "function",
                          "function": {"name": str(block["name"]),
                                       "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # reasoning of an earlier turn; OpenAI chat has no slot for it
        else:
            raise BadRequestError(f"content block type {kind!r} is not supported", param=f"{param}[{i}]")
    if not texts and not calls:
        return None
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequestError("tools must be a list", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not tool.get("name") or tool.get("type") not in (None, "custom"):
            raise BadRequestError("only custom tools (name + input_schema) are supported", param=f"tools[{i}]")
        fn: dict[str, Any] = {"name": tool["name"],
                              "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> tuple[Any, bool | None]:
    if not isinstance(choice, dict):
        raise BadRequestError("tool_choice must be an object", param="tool_choice")
    parallel = False if choice.get("disable_parallel_tool_use") else None
    kind = choice.get("type")
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise BadRequestError("tool_choice.type must be auto, any, tool or none", param="tool_choice")


def to_openai_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat completions body (raises 400 if invalid)."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequestError("model: Field required", param="model")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequestError("max_tokens: a positive integer is required", param="max_tokens")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequestError("messages: a non-empty list is required", param="messages")
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text(body["system"], "system")})
    for i, msg in enumerate(msgs):
        role = msg.get("role") if isinstance(msg, dict) else None
        param = f"messages.{i}.content"
        if role == "user":
            messages.extend(_user_messages(msg.get("content"), param))
        elif role == "assistant":
            if (m := _assistant_message(msg.get("content"), param)) is not None:
                messages.append(m)
        else:
            raise BadRequestError(f"messages.{i}.role must be user or assistant", param=f"messages.{i}.role")
    out: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": max_tokens}
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        choice, parallel = _tool_choice(body["tool_choice"])
        if "tools" in out:
            out["tool_choice"] = choice
            if parallel is not None:
                out["parallel_tool_calls"] = parallel
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = str(metadata["user_id"])
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# --------------------------------------------------------------------------- response


def _usage(u: Any) -> dict[str, int]:
    u = u if isinstance(u, dict) else {}
    details = as_dict(u.get("prompt_tokens_details"))
    cached = as_int(details.get("cached_tokens"))
    out = {"input_tokens": max(0, as_int(u.get("prompt_tokens")) - cached),
           "output_tokens": as_int(u.get("completion_tokens"))}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def from_openai_response(doc: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic Message (first choice)."""
    choices = doc.get("choices")
    choice: dict[str, Any] = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message: dict[str, Any] = as_dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": str(message["content"])})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {"_raw_arguments": fn.get("arguments")}
        content.append({"type": "tool_use", "id": str(call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}"),
                        "name": str(fn.get("name") or ""), "input": args if isinstance(args, dict) else {"value": args}})
    finish = choice.get("finish_reason")
    return {"id": _message_id(), "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": FINISH_REASONS.get(finish or "", "end_turn"), "stop_sequence": None,
            "usage": _usage(doc.get("usage"))}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """The Anthropic error body for an HTTP status and message."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _sse(event: str, obj: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


class AnthropicEgress:
    """Turns the pipeline's OpenAI output into Anthropic output for one ``/v1/messages`` request.

    ``translate_body`` handles whole JSON bodies (success or ``{"error": ...}``);
    ``translate_stream`` takes OpenAI SSE bytes in any split; ``finish_stream`` closes the
    Anthropic event sequence (or reports an ``error`` event when the stream broke off).
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._decoder = SSEDecoder()
        self._started = False
        self._done = False
        self._block: int = -1  # index of the open content block, -1 none
        self._block_kind = ""
        self._tool_slot: dict[int, int] = {}  # OpenAI tool_calls index -> content block index
        self._finish: str | None = None
        self._usage: dict[str, Any] = {}

    # -- whole bodies

    def translate_body(self, status: int, body: bytes) -> bytes:
        try:
            doc = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            return orjson.dumps(anthropic_error(502, "the backend answer could not be read"))
        if status >= 400 or "error" in doc:
            err: dict[str, Any] = as_dict(doc.get("error"))
            return orjson.dumps(anthropic_error(status if status >= 400 else 502,
                                                str(err.get("message") or "request failed")))
        return orjson.dumps(from_openai_response(doc, model=self.model))

    # -- streams

    def translate_stream(self, data: bytes) -> bytes:
        try:
            events = self._decoder.feed(data)
        except ValueError:
            return self._error("the backend stream could not be read")
        return b"".join(self._on_data(ev.data) for ev in events)

    def finish_stream(self) -> bytes:
        out = b"".join(self._on_data(ev.data) for ev in self._decoder.close())
        if self._done:
            return out
        if self._finish is None:
            return out + self._error("the backend stream ended before it finished")
        return out + self._end()

    def _on_data(self, data: str) -> bytes:
        if self._done or not data.strip():
            return b""
        if data.strip() == "[DONE]":
            return self._end()
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._error("the backend stream carried invalid JSON")
        if not isinstance(doc, dict):
            return self._error("the backend stream carried an unexpected event")
        if isinstance(doc.get("error"), dict):
            return self._error(str(doc["error"].get("message") or "backend error"),
                               as_int(doc["error"].get("status"), 500) or 500)
        out = self._start()
        if isinstance(doc.get("usage"), dict):
            self._usage = doc["usage"]
        choices: list[Any] = as_list(doc.get("choices"))
        for choice in [c for c in choices[:1] if isinstance(c, dict)]:
            delta = as_dict(choice.get("delta"))
            if delta.get("content"):
                out += self._open("text", {"type": "text", "text": ""})
                out += _sse("content_block_delta", {"type": "content_block_delta", "index": self._block,
                                                    "delta": {"type": "text_delta", "text": str(delta["content"])}})
            for call in as_list(delta.get("tool_calls")):
                out += self._tool_delta(call)
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        return out

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {"id": _message_id(), "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return _sse("message_start", {"type": "message_start", "message": message})

    def _close_block(self) -> bytes:
        if self._block_kind == "":
            return b""
        self._block_kind = ""
        return _sse("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        if self._block_kind == kind == "text":
            return b""
        out = self._close_block()
        self._block += 1
        self._block_kind = kind
        return out + _sse("content_block_start", {"type": "content_block_start", "index": self._block,
                                                  "content_block": block})

    def _tool_delta(self, call: Any) -> bytes:
        if not isinstance(call, dict):
            return b""
        slot = as_int(call.get("index"))
        fn: dict[str, Any] = as_dict(call.get("function"))
        out = b""
        if slot not in self._tool_slot:
            out += self._open("tool", {"type": "tool_use", "id": str(call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}"),
                                       "name": str(fn.get("name") or ""), "input": {}})
            self._tool_slot[slot] = self._block
        elif self._tool_slot[slot] != self._block:
            return b""  # interleaved argument fragments of an already closed block: not expressible
        if fn.get("arguments"):
            out += _sse("content_block_delta", {"type": "content_block_delta", "index": self._block,
                                                "delta": {"type": "input_json_delta",
                                                          "partial_json": str(fn["arguments"])}})
        return out

    def _end(self) -> bytes:
        if self._done:
            return b""
        out = self._start() + self._close_block()
        self._done = True
        usage = _usage(self._usage)
        out += _sse("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": FINISH_REASONS.get(self._finish or "", "end_turn"),
                                                "stop_sequence": None},
                                      "usage": usage})
        return out + _sse("message_stop", {"type": "message_stop"})

    def _error(self, message: str, status: int = 502) -> bytes:
        if self._done:
            return b""
        self._done = True
        return _sse("error", anthropic_error(status, message))
