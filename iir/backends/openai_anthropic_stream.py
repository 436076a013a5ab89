"""Anthropic Messages stream → OpenAI ``chat.completion.chunk`` SSE (client speaks OpenAI).

Event flow per https://docs.anthropic.com/en/docs/build-with-claude/streaming: ``message_start``,
per block ``content_block_start`` / ``content_block_delta`` (``text_delta``, ``input_json_delta``) /
``content_block_stop``, ``message_delta`` (stop reason, cumulative usage), ``message_stop``;
``ping`` and event types added later are skipped (Anthropic's versioning policy); an ``error``
event raises the mapped :class:`~iir.errors.UpstreamError`; missing fields and invalid JSON are a 502.
Also holds the response helpers shared with :mod:`iir.backends.openai_anthropic`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from iir.backends.jsonval import as_dict, as_int
from iir.backends.provider_errors import malformed, upstream_http_error
from iir.backends.sse_reader import SSEDecoder

__all__ = ["ERROR_STATUS", "PROVIDER", "STOP_REASONS", "AnthropicStreamTranslator", "openai_usage", "parse_json"]

PROVIDER = "anthropic"
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                 "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                 "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}




def openai_usage(u: Any) -> dict[str, Any]:
    if not isinstance(u, dict):
        return {}
    cached = as_int(u.get("cache_read_input_tokens"))
    prompt = as_int(u.get("input_tokens")) + as_int(u.get("cache_creation_input_tokens")) + cached
    completion = as_int(u.get("output_tokens"))
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def parse_json(data: bytes | str | Mapping[str, Any], what: str) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise malformed(PROVIDER, f"{what} is not JSON ({e.msg})") from None
    if not isinstance(doc, dict):
        raise malformed(PROVIDER, f"{what} is not a JSON object")
    return doc


def _sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class AnthropicStreamTranslator:
    """Anthropic stream bytes in, OpenAI ``chat.completion.chunk`` SSE bytes out.

    ``feed()`` accepts any split of the upstream bytes; ``close()`` must be called at the end
    of the upstream body and raises a 502 if the stream stopped before ``message_stop``.
    Upstream ``error`` events raise the mapped :class:`UpstreamError`.
    """

    def __init__(self, *, model: str = "", include_usage: bool = False, created: int | None = None) -> None:
        self._decoder = SSEDecoder()
        self._include_usage = include_usage
        self._created = created if created is not None else int(time.time())
        self._id = "msg"
        self._model = model
        self._started = False
        self._done = False
        self._tools: dict[int, int] = {}  # content block index -> OpenAI tool_calls index
        self._usage: dict[str, Any] = {}
        self._stop: str | None = None
        self._pending = b""

    @property
    def started(self) -> bool:
        """True once ``message_start`` was seen."""
        return self._started

    @property
    def done(self) -> bool:
        return self._done

    @property
    def usage(self) -> dict[str, int]:
        """OpenAI usage counts seen so far."""
        return {k: v for k, v in openai_usage(self._usage).items() if isinstance(v, int)}

    @property
    def finish_reason(self) -> str | None:
        return STOP_REASONS.get(self._stop, "stop") if self._stop else None

    def feed(self, chunk: bytes) -> bytes:
        try:
            events = self._decoder.feed(chunk)
        except ValueError as e:
            raise malformed(PROVIDER, str(e)) from None
        return self._flush(b"".join(self._event(ev.event, ev.data) for ev in events))

    def close(self) -> bytes:
        out = b"".join(self._event(ev.event, ev.data) for ev in self._decoder.close())
        if not self._done:
            raise malformed(PROVIDER, "the stream ended before message_stop")
        return self._flush(out)

    def _flush(self, out: bytes) -> bytes:
        if out and self._pending:
            out, self._pending = self._pending + out, b""
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                     "model": self._model,
                     "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    def _event(self, name: str, data: str) -> bytes:
        if self._done or (not data and name in ("", "ping")):
            return b""
        doc = parse_json(data, f"stream event {name or '(unnamed)'!r}")
        kind = doc.get("type") or name
        if not isinstance(kind, str):
            raise malformed(PROVIDER, "stream event with a non-string type")
        if kind == "error":
            err: dict[str, Any] = as_dict(doc.get("error"))
            etype = str(err.get("type") or "api_error")
            raise upstream_http_error(PROVIDER, ERROR_STATUS.get(etype, 500), str(err.get("message") or ""),
                                      upstream_type=etype)
        handler = getattr(self, f"_on_{kind}", None) if kind in _HANDLED else None
        if handler is None:
            return b""  # ping and event types added after this code was written
        if kind != "message_start" and not self._started:
            raise malformed(PROVIDER, f"{kind} before message_start")
        return handler(doc)  # type: ignore[no-any-return]

    def _on_message_start(self, doc: dict[str, Any]) -> bytes:
        msg = doc.get("message")
        if not isinstance(msg, dict):
            raise malformed(PROVIDER, "message_start without a message")
        self._started = True
        self._id = str(msg.get("id") or self._id)
        self._model = self._model or str(msg.get("model") or "")
        self._usage = dict(as_dict(msg.get("usage")))
        # held back until there is content: an error event right after message_start can
        # then still fall back to the next candidate (nothing reached the client yet)
        self._pending = self._chunk({"role": "assistant", "content": ""})
        return b""

    def _on_content_block_start(self, doc: dict[str, Any]) -> bytes:
        index, block = doc.get("index"), doc.get("content_block")
        if not isinstance(index, int) or not isinstance(block, dict):
            raise malformed(PROVIDER, "content_block_start without index or content_block")
        if block.get("type") == "text" and block.get("text"):
            return self._chunk({"content": str(block["text"])})
        if block.get("type") != "tool_use":
            return b""
        if not block.get("id") or not block.get("name"):
            raise malformed(PROVIDER, "tool_use block without id or name")
        self._tools[index] = len(self._tools)
        args = orjson.dumps(block["input"]).decode() if block.get("input") else ""
        return self._chunk({"tool_calls": [{"index": self._tools[index], "id": block["id"], "type": "function",
                                            "function": {"name": block["name"], "arguments": args}}]})

    def _on_content_block_delta(self, doc: dict[str, Any]) -> bytes:
        index, delta = doc.get("index"), doc.get("delta")
        if not isinstance(index, int) or not isinstance(delta, dict):
            raise malformed(PROVIDER, "content_block_delta without index or delta")
        if delta.get("type") == "text_delta":
            text = delta.get("text")
            if not isinstance(text, str):
                raise malformed(PROVIDER, "text_delta without text")
            return self._chunk({"content": text}) if text else b""
        if delta.get("type") == "input_json_delta":
            part = delta.get("partial_json")
            if not isinstance(part, str):
                raise malformed(PROVIDER, "input_json_delta without partial_json")
            if index not in self._tools:
                raise malformed(PROVIDER, f"input_json_delta for block {index}, which is not a tool_use")
            if not part:
                return b""
            return self._chunk({"tool_calls": [{"index": self._tools[index], "function": {"arguments": part}}]})
        return b""  # thinking_delta, signature_delta, citations_delta, ...

    def _on_content_block_stop(self, doc: dict[str, Any]) -> bytes:
        return b""

    def _on_message_delta(self, doc: dict[str, Any]) -> bytes:
        delta = doc.get("delta")
        if not isinstance(delta, dict):
            raise malformed(PROVIDER, "message_delta without delta")
        if delta.get("stop_reason"):
            self._stop = str(delta["stop_reason"])
        if isinstance(doc.get("usage"), dict):
            self._usage.update({k: v for k, v in doc["usage"].items() if v is not None})
        return b""

    def _on_message_stop(self, doc: dict[str, Any]) -> bytes:
        self._done = True
        finish = STOP_REASONS.get(self._stop or "", "tool_calls" if self._tools and not self._stop else "stop")
        out = self._chunk({}, finish)
        if self._include_usage:
            out += _sse({"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                         "model": self._model, "choices": [], "usage": openai_usage(self._usage)})
        return out + b"data: [DONE]\n\n"


_HANDLED = frozenset({"message_start", "content_block_start", "content_block_delta", "content_block_stop",
                      "message_delta", "message_stop"})
