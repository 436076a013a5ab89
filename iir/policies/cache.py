"""Exact-match response cache: keys, entries, stream assembly and replay, single-flight.

* Key: SHA-256 of the endpoint, the model and the canonical JSON (sorted keys, integral floats
  as integers) of the configured request fields. ``stream`` is not part of the key: a
  streamed answer is stored as the equivalent whole response and can serve either form.
* Only deterministic requests are cached by default (``temperature`` 0 or a ``seed``).
* An entry is the OpenAI JSON response (``chat.completion``, ``text_completion`` or an
  embeddings list). A streamed response is assembled from its SSE chunks; a cached answer is
  replayed to a streaming client as a proper SSE stream (role, content, tool calls, finish,
  optional usage chunk, ``[DONE]``).
* :class:`SingleFlight`: concurrent identical requests in one process wait for the first one's
  upstream call instead of making their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from iir.policies.store import StateStore, StoreUnavailable

__all__ = [
    "BodyCapture",
    "ResponseCache",
    "SingleFlight",
    "assemble_stream",
    "cache_key",
    "is_deterministic",
    "replay_stream",
]

CACHEABLE_ENDPOINTS = frozenset({"chat", "completions", "embeddings"})


def _canon(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    return value


def cache_key(endpoint: str, model: str, body: dict[str, Any], fields: Sequence[str]) -> str:
    picked = {f: _canon(body[f]) for f in fields if f in body and body[f] is not None}
    raw = orjson.dumps([endpoint, model, picked], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


def is_deterministic(endpoint: str, body: dict[str, Any]) -> bool:
    """Embeddings always; generations only with ``temperature`` 0 or a ``seed``."""
    if endpoint == "embeddings":
        return True
    temperature = body.get("temperature")
    return body.get("seed") is not None or (isinstance(temperature, int | float) and temperature == 0)


class BodyCapture:
    """Collects the bytes the relay sends to the client, up to ``limit``."""

    __slots__ = ("_parts", "limit", "overflow", "size")

    def __init__(self, limit: int) -> None:
        self.limit, self.size, self.overflow = limit, 0, False
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        if self.overflow:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.overflow, self._parts = True, []
            return
        self._parts.append(bytes(chunk))

    def value(self) -> bytes:
        return b"".join(self._parts)


def _sse_payloads(raw: bytes) -> Iterable[bytes]:
    for line in raw.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data and data != b"[DONE]":
                yield data


def assemble_stream(raw: bytes, endpoint: str) -> dict[str, Any] | None:
    """The whole response equivalent to an OpenAI SSE stream, or ``None`` when the stream is
    incomplete or carried an error (then it must not be cached)."""
    meta: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for data in _sse_payloads(raw):
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(chunk, dict) or "error" in chunk:
            return None
        for k in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(k) is not None:
                meta.setdefault(k, chunk[k])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices") or ():
            c = choices.setdefault(int(ch.get("index", 0)), {"text": [], "tools": {}, "role": "assistant",
                                                             "finish_reason": None, "refusal": []})
            if ch.get("finish_reason"):
                c["finish_reason"] = ch["finish_reason"]
            if endpoint == "completions":
                c["text"].append(ch.get("text") or "")
                continue
            delta = ch.get("delta") or {}
            if delta.get("role"):
                c["role"] = delta["role"]
            if delta.get("content"):
                c["text"].append(delta["content"])
            if delta.get("refusal"):
                c["refusal"].append(delta["refusal"])
            for tc in delta.get("tool_calls") or ():
                slot = c["tools"].setdefault(int(tc.get("index", 0)), {"id": None, "type": "function",
                                                                       "function": {"name": "", "arguments": ""}})
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
    if not choices or any(c["finish_reason"] is None for c in choices.values()):
        return None
    out: dict[str, Any] = {"id": meta.get("id", ""), "created": meta.get("created", int(time.time())),
                           "model": meta.get("model", "")}
    if meta.get("system_fingerprint"):
        out["system_fingerprint"] = meta["system_fingerprint"]
    if endpoint == "completions":
        out["object"] = "text_completion"
        out["choices"] = [{"index": i, "text": "".join(c["text"]), "finish_reason": c["finish_reason"],
                           "logprobs": None} for i, c in sorted(choices.items())]
    else:
        out["object"] = "chat.completion"
        out["choices"] = []
        for i, c in sorted(choices.items()):
            msg: dict[str, Any] = {"role": c["role"], "content": "".join(c["text"]) if c["text"] or not c["tools"] else None}
            if c["refusal"]:
                msg["refusal"] = "".join(c["refusal"])
            if c["tools"]:
                msg["tool_calls"] = [t for _, t in sorted(c["tools"].items())]
            out["choices"].append({"index": i, "message": msg, "finish_reason": c["finish_reason"], "logprobs": None})
    if usage:
        out["usage"] = usage
    return out


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def replay_stream(entry: dict[str, Any], endpoint: str, *, model: str, include_usage: bool) -> list[bytes]:
    """SSE events replaying a cached whole response, as an upstream stream would send them."""
    base = {"id": entry.get("id", ""), "created": entry.get("created", int(time.time())), "model": model}
    if entry.get("system_fingerprint"):
        base["system_fingerprint"] = entry["system_fingerprint"]
    events: list[bytes] = []
    if endpoint == "completions":
        base["object"] = "text_completion"
        for ch in entry.get("choices", ()):
            events.append(_sse({**base, "choices": [{"index": ch.get("index", 0), "text": ch.get("text", ""),
                                                     "finish_reason": None, "logprobs": None}]}))
            events.append(_sse({**base, "choices": [{"index": ch.get("index", 0), "text": "",
                                                     "finish_reason": ch.get("finish_reason"), "logprobs": None}]}))
    else:
        base["object"] = "chat.completion.chunk"
        for ch in entry.get("choices", ()):
            i, msg = ch.get("index", 0), ch.get("message") or {}
            events.append(_sse({**base, "choices": [{"index": i, "delta": {"role": msg.get("role", "assistant"), "content": ""},
                                                     "finish_reason": None, "logprobs": None}]}))
            if msg.get("content"):
                events.append(_sse({**base, "choices": [{"index": i, "delta": {"content": msg["content"]},
                                                         "finish_reason": None, "logprobs": None}]}))
            if msg.get("refusal"):
                events.append(_sse({**base, "choices": [{"index": i, "delta": {"refusal": msg["refusal"]},
                                                         "finish_reason": None, "logprobs": None}]}))
            for j, tc in enumerate(msg.get("tool_calls") or ()):
                events.append(_sse({**base, "choices": [{"index": i, "delta": {"tool_calls": [{"index": j, **tc}]},
                                                         "finish_reason": None, "logprobs": None}]}))
            events.append(_sse({**base, "choices": [{"index": i, "delta": {}, "finish_reason": ch.get("finish_reason"),
                                                     "logprobs": None}]}))
    if include_usage and entry.get("usage"):
        events.append(_sse({**base, "choices": [], "usage": entry["usage"]}))
    events.append(b"data: [DONE]\n\n")
    return events


class SingleFlight:
    """At most one upstream call per key in this process; others wait for its entry."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[bytes | None]] = {}

    def in_flight(self, key: str) -> asyncio.Future[bytes | None] | None:
        return self._calls.get(key)

    def lead(self, key: str) -> asyncio.Future[bytes | None]:
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._calls[key] = fut
        return fut

    def finish(self, key: str, fut: asyncio.Future[bytes | None], entry: bytes | None) -> None:
        """Resolve ``fut`` (the leader's own call); unregister it if it is still the current one."""
        if self._calls.get(key) is fut:
            del self._calls[key]
        if not fut.done():
            fut.set_result(entry)

    def __len__(self) -> int:
        return len(self._calls)


class ResponseCache:
    """Entries in a :class:`StateStore` under ``cache:<key>``; one per app."""

    def __init__(self, store: StateStore, *, prefix: str = "cache:") -> None:
        self.store = store
        self.prefix = prefix
        self.flight = SingleFlight()

    async def get(self, key: str) -> dict[str, Any] | None:
        """The cached response, ``None`` on a miss. Raises :class:`StoreUnavailable`."""
        raw = await self.store.get(self.prefix + key)
        if raw is None:
            return None
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return entry if isinstance(entry, dict) else None

    @staticmethod
    def encode(response: dict[str, Any]) -> bytes:
        return orjson.dumps(response)

    async def put(self, key: str, encoded: bytes, ttl: float) -> bool:
        try:
            await self.store.set(self.prefix + key, encoded, ttl)
        except StoreUnavailable:
            return False
        return True
