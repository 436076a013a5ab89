"""OpenAI client → iir local agent (``POST {base}/infer``).

Agent protocol (served by ``iir agent``):

* request: ``{"messages": [...]}`` (chat) or ``{"prompt": "..."}`` (completions), plus any of
  ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed`` and ``stream``;
* non-streamed reply: ``{"text", "finish_reason", "usage": {"prompt_tokens", "completion_tokens"}}``;
* streamed reply (SSE): ``data: {"text": "<delta>"}`` events, then
  ``data: {"finish_reason": ..., "usage": {...}}`` and ``data: [DONE]``;
* errors: a non-2xx status with ``{"error": {"message": ...}}``.

Replies are translated into OpenAI ``chat.completion`` / ``text_completion`` objects and
chunks; the ``model`` is the name the client asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from iir.backends.base import Adapter, ClientRequest, StreamTranslator, UpstreamRequest, sse_data
from iir.errors import BadRequestError, UpstreamError
from iir.table import Backend

__all__ = ["ADAPTER", "AgentAdapter"]

_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed")


def _text_of(content: Any) -> str:
    """Message content as plain text: strings as is, content parts' text joined."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise BadRequestError("message content must be a string or a list of content parts", param="messages")


def _usage(data: dict[str, Any]) -> dict[str, int]:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return {}
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return {}
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _ids(req: ClientRequest) -> tuple[str, str]:
    prefix = "chatcmpl-" if req.endpoint == "chat" else "cmpl-"
    return prefix + req.request_id, ("chat.completion" if req.endpoint == "chat" else "text_completion")


@dataclass(slots=True)
class AgentStream(StreamTranslator):
    """Agent SSE → OpenAI chunk SSE."""

    id: str = ""
    model: str = ""
    chat: bool = True
    include_usage: bool = False
    created: int = 0
    started: bool = False

    def _chunk(self, delta: dict[str, Any] | None, text: str | None, finish: str | None) -> bytes:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return sse_data({"id": self.id, "object": obj, "created": self.created, "model": self.model,
                         "choices": [choice]})

    def feed(self, block: bytes) -> list[bytes]:
        out: list[bytes] = []
        for line in block.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                data = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise UpstreamError("agent sent an unreadable stream event") from None
            if not isinstance(data, dict):
                raise UpstreamError("agent sent a stream event that is not an object")
            if "error" in data:
                err = data["error"]
                msg = err.get("message") if isinstance(err, dict) else str(err)
                self.error = UpstreamError(f"agent error: {msg}")
                break
            out.extend(self._event(data))
        return out

    def _event(self, data: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        text = data.get("text")
        if isinstance(text, str) and text:
            delta: dict[str, Any] = {"content": text}
            if not self.started:
                delta["role"] = "assistant"
                self.started = True
            out.append(self._chunk(delta, text, None))
        if "finish_reason" in data:
            self.finish_reason = str(data.get("finish_reason") or "stop")
            self.usage = _usage(data)
            out.append(self._chunk({} if self.started else {"role": "assistant", "content": ""}, "",
                                   self.finish_reason))
            if self.include_usage and self.usage:
                out.append(sse_data({"id": self.id, "object": "chat.completion.chunk" if self.chat else
                                     "text_completion", "created": self.created, "model": self.model,
                                     "choices": [], "usage": self.usage}))
        return out

    def finish(self) -> list[bytes]:
        return [b"data: [DONE]\n\n"]


class AgentAdapter(Adapter):
    protocol = "agent"
    endpoints = frozenset({"chat", "completions"})

    def build(self, req: ClientRequest, backend: Backend) -> UpstreamRequest:
        body = req.body
        # The agent protocol carries neither tools nor several choices: refuse rather than answer
        # a tool call with plain text or n=2 with one choice (the agent's own /v1 refuses both too).
        if body.get("tools") or body.get("functions"):
            raise BadRequestError(f"backend {backend.name!r} (a local agent) does not support tools or function "
                                  "calling; route tool requests to a backend that does", param="tools",
                                  code="unsupported_parameter")
        n = body.get("n")
        if isinstance(n, int) and n > 1:
            raise BadRequestError(f"backend {backend.name!r} (a local agent) returns one choice; n={n} is not "
                                  "supported", param="n", code="unsupported_parameter")
        out: dict[str, Any] = {}
        if req.endpoint == "chat":
            out["messages"] = [{"role": m.get("role", "user"), "content": _text_of(m.get("content"))}
                               for m in body["messages"]]
        elif req.endpoint == "completions":
            prompt = body.get("prompt", "")
            if isinstance(prompt, list):
                if len(prompt) != 1 or not isinstance(prompt[0], str):
                    raise BadRequestError("an agent backend takes a single string prompt", param="prompt")
                prompt = prompt[0]
            out["prompt"] = prompt
        else:
            raise self.unsupported(req, backend)
        for name in _PARAMS:
            if body.get(name) is not None:
                out[name] = body[name]
        if out.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
            out["max_tokens"] = body["max_completion_tokens"]
        out["stream"] = req.stream
        headers = {"content-type": "application/json", "x-request-id": req.request_id}
        headers.update(backend.headers)
        if backend.api_key:
            headers["authorization"] = f"Bearer {backend.api_key}"
        return UpstreamRequest("POST", backend.base_url + "/infer", headers, orjson.dumps(out), req.stream)

    def translate_response(self, req: ClientRequest, backend: Backend, body: bytes) -> tuple[bytes, dict[str, int]]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"agent {backend.name!r} returned a body that is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise UpstreamError(f"agent {backend.name!r} returned no text")
        usage = _usage(data)
        rid, obj = _ids(req)
        finish = str(data.get("finish_reason") or "stop")
        if req.endpoint == "chat":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": data["text"]},
                                      "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": data["text"], "logprobs": None, "finish_reason": finish}
        result: dict[str, Any] = {"id": rid, "object": obj, "created": int(time.time()), "model": req.model,
                                  "choices": [choice]}
        if usage:
            result["usage"] = usage
        return orjson.dumps(result), usage

    def stream_translator(self, req: ClientRequest, backend: Backend) -> StreamTranslator:
        rid, _ = _ids(req)
        opts = req.body.get("stream_options")
        include = isinstance(opts, dict) and bool(opts.get("include_usage"))
        return AgentStream(id=rid, model=req.model, chat=req.endpoint == "chat", include_usage=include,
                           created=int(time.time()))


ADAPTER = AgentAdapter()
