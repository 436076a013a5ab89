"""Gemini response side: ``streamGenerateContent?alt=sse`` → OpenAI ``chat.completion.chunk`` SSE,
plus the helpers shared with :mod:`iir.backends.openai_gemini` (finish reasons, usage, parts, errors).

Wire format: https://ai.google.dev/api/generate-content (GenerateContentResponse, FinishReason,
UsageMetadata, PromptFeedback), https://ai.google.dev/gemini-api/docs/troubleshooting (errors).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from iir.apischema.gemini import BLOCKED_FINISH_REASONS
from iir.backends.jsonval import as_dict, as_int
from iir.backends.provider_errors import malformed, upstream_http_error
from iir.backends.sse_reader import SSEDecoder
from iir.errors import UpstreamError

__all__ = ["PROVIDER", "THOUGHT_SEP", "GeminiStreamTranslator", "candidate_parts", "error_from_gemini", "finish_reason",
           "openai_usage", "parse_json"]

PROVIDER = "gemini"
#: A function call's ``thoughtSignature`` travels inside the OpenAI tool call id, after this
#: separator, so that the client's next request hands it back to Gemini (required since Gemini 3:
#: https://ai.google.dev/gemini-api/docs/thought-signatures).
THOUGHT_SEP = "__thought__"




def finish_reason(reason: str | None, has_calls: bool) -> str | None:
    """OpenAI ``finish_reason`` for a Gemini ``finishReason`` (None: not finished yet)."""
    if not reason:
        return None
    if reason in BLOCKED_FINISH_REASONS:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if has_calls else "stop"


def openai_usage(u: Any) -> dict[str, Any]:
    if not isinstance(u, dict):
        return {}
    prompt = as_int(u.get("promptTokenCount"))
    thoughts = as_int(u.get("thoughtsTokenCount"))
    completion = as_int(u.get("candidatesTokenCount")) + thoughts
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": as_int(u.get("totalTokenCount"), prompt + completion)}
    if u.get("cachedContentTokenCount"):
        out["prompt_tokens_details"] = {"cached_tokens": as_int(u["cachedContentTokenCount"])}
    if thoughts:
        out["completion_tokens_details"] = {"reasoning_tokens": thoughts}
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


def candidate_parts(candidate: Any, where: str) -> tuple[str, list[dict[str, Any]]]:
    """Text and function calls of one candidate (thought parts are not part of the answer)."""
    if not isinstance(candidate, dict):
        raise malformed(PROVIDER, f"{where} is not an object")
    content = candidate.get("content")
    if content is None:
        return "", []
    parts = content.get("parts") if isinstance(content, dict) else None
    if parts is None:
        return "", []
    if not isinstance(parts, list):
        raise malformed(PROVIDER, f"{where}.content.parts is not a list")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise malformed(PROVIDER, f"{where}.content.parts[{j}] is not an object")
        if isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
        elif "functionCall" in part:
            fc = part["functionCall"]
            if not isinstance(fc, dict) or not fc.get("name"):
                raise malformed(PROVIDER, f"{where}.content.parts[{j}].functionCall without a name")
            call_id = str(fc.get("id") or f"call_{uuid.uuid4().hex[:24]}")
            if isinstance(part.get("thoughtSignature"), str):  # must come back with the history (Gemini 3+)
                call_id += THOUGHT_SEP + part["thoughtSignature"]
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": str(fc["name"]), "arguments": orjson.dumps(fc.get("args") or {}).decode()}})
    return "".join(texts), calls


def _retry_delay(err: Mapping[str, Any]) -> str | None:
    for detail in err.get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = str(detail.get("retryDelay") or "").rstrip("s")
            try:
                return str(max(1, round(float(delay))))
            except ValueError:
                return None
    return None


def _is_key_invalid(err: Mapping[str, Any]) -> bool:
    return any(isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in err.get("details") or [])


def error_from_gemini(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> UpstreamError:
    """The typed error for a Gemini error (``{"error": {"code", "message", "status", "details"}}``)."""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    err: dict[str, Any] = as_dict(doc.get("error")) if isinstance(doc, dict) else {}
    message = str(err.get("message") or body[:200].decode("utf-8", errors="replace"))
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if "retry-after" not in hdrs and (delay := _retry_delay(err)):
        hdrs["retry-after"] = delay
    upstream_type = str(err.get("status") or "") or None
    if status == 400 and _is_key_invalid(err):  # the router's key, not the client's request: a 502
        e = upstream_http_error(PROVIDER, 401, message, upstream_type=upstream_type, headers=hdrs)
        e.message = f"{PROVIDER} rejected the router's credentials (HTTP 400 API_KEY_INVALID): {message}"
        return e
    return upstream_http_error(PROVIDER, status, message, upstream_type=upstream_type, headers=hdrs)


def _sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class GeminiStreamTranslator:
    """``streamGenerateContent?alt=sse`` bytes in, OpenAI ``chat.completion.chunk`` SSE bytes out.

    Gemini sends no end marker: ``close()`` (at the end of the body) emits the finish chunk,
    the usage chunk (``include_usage``) and ``[DONE]``; it raises a 502 when no candidate
    ever finished (a cut stream). An ``{"error": ...}`` event raises the mapped error.
    """

    def __init__(self, *, model: str = "", include_usage: bool = False, created: int | None = None) -> None:
        self._decoder = SSEDecoder()
        self._include_usage = include_usage
        self._created = created if created is not None else int(time.time())
        self._id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self._model = model
        self._started: set[int] = set()
        self._tools: dict[int, int] = {}  # candidate index -> tool calls so far
        self._finish: dict[int, str] = {}
        self._usage: dict[str, Any] = {}
        self._blocked = False

    @property
    def started(self) -> bool:
        return bool(self._started)

    @property
    def done(self) -> bool:
        return bool(self._finish)

    @property
    def usage(self) -> dict[str, int]:
        return {k: v for k, v in openai_usage(self._usage).items() if isinstance(v, int)}

    @property
    def finish_reason(self) -> str | None:
        return self._finish.get(0) or next(iter(self._finish.values()), None)

    def feed(self, chunk: bytes) -> bytes:
        try:
            events = self._decoder.feed(chunk)
        except ValueError as e:
            raise malformed(PROVIDER, str(e)) from None
        return b"".join(self._event(ev.data) for ev in events)

    def close(self) -> bytes:
        out = b"".join(self._event(ev.data) for ev in self._decoder.close())
        if not self._finish:
            raise malformed(PROVIDER, "the stream ended before any candidate finished")
        if self._include_usage:
            out += _sse({"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                         "model": self._model, "choices": [], "usage": openai_usage(self._usage)})
        return out + b"data: [DONE]\n\n"

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                     "model": self._model,
                     "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    def _event(self, data: str) -> bytes:
        if not data.strip():
            return b""
        doc = parse_json(data, "stream event")
        if isinstance(doc.get("error"), dict):
            raise error_from_gemini(as_int(doc["error"].get("code"), 500) or 500, data.encode())
        if not self._model and doc.get("modelVersion"):
            self._model = str(doc["modelVersion"])
        if isinstance(doc.get("usageMetadata"), dict):
            self._usage = doc["usageMetadata"]
        candidates = doc.get("candidates")
        if candidates is None:
            feedback = doc.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                return self._role(0) + self._finish_chunk(0, "content_filter")
            return b""  # a usage-only chunk
        if not isinstance(candidates, list):
            raise malformed(PROVIDER, "'candidates' is not a list")
        out = b""
        for i, cand in enumerate(candidates):
            index = as_int(cand.get("index"), i) if isinstance(cand, dict) else i
            text, calls = candidate_parts(cand, f"candidates[{i}]")
            out += self._role(index)
            if text:
                out += self._chunk(index, {"content": text})
            if calls:
                base = self._tools.get(index, 0)
                self._tools[index] = base + len(calls)
                out += self._chunk(index, {"tool_calls": [dict(c, index=base + k) for k, c in enumerate(calls)]})
            reason = finish_reason(cand.get("finishReason"), bool(self._tools.get(index)))
            if reason:
                out += self._finish_chunk(index, reason)
        return out

    def _role(self, index: int) -> bytes:
        if index in self._started:
            return b""
        self._started.add(index)
        return self._chunk(index, {"role": "assistant", "content": ""})

    def _finish_chunk(self, index: int, reason: str) -> bytes:
        if index in self._finish:
            return b""
        self._finish[index] = reason
        return self._chunk(index, {}, reason)
