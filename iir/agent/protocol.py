"""Wire formats of the agent: ``/infer`` and OpenAI chat completions, in and out.

Bodies are validated into a :class:`~iir.agent.engine.GenerationRequest`; every problem becomes a
:class:`~iir.errors.BadRequestError` naming the field. Responses are plain dicts (serialised by
the service). The ``/infer`` contract is documented in docs and on the coordination board:

* request ``{prompt | messages, max_tokens, temperature, top_p, stop, seed, stream, raw, min_tokens}``
* answer ``{"text", "finish_reason", "usage": {...}, "model"}``; stream: ``data: {"text": ...}``
  events, then ``data: {"finish_reason", "usage"}`` and ``data: [DONE]``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from iir.agent.engine import GenerationRequest, GenerationResult
from iir.errors import BadRequestError

__all__ = [
    "ChatBody",
    "InferBody",
    "chat_chunk",
    "chat_response",
    "infer_response",
    "new_completion_id",
    "parse_body",
    "sse",
    "to_generation_request",
]

_T = TypeVar("_T", bound=BaseModel)
_ROLES = Literal["system", "developer", "user", "assistant", "tool"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: _ROLES
    content: str | list[_Part] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        out = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise BadRequestError(f"content parts of type {part.type!r} are not supported by this agent "
                                      "(text only)", param="messages")
            out.append(part.text)
        return "".join(out)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # None: the client left it to the model, whose generation_config decides (greedy for the demo model)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    min_tokens: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _stops(self) -> _Sampling:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return self


class InferBody(_Sampling):
    """``POST /infer``."""

    prompt: str | None = None
    messages: list[Message] | None = None
    raw: bool = False
    max_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_input(self) -> InferBody:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` (a string) or `messages` (a list of chat messages)")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` must not be empty")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatBody(_Sampling):
    """``POST /v1/chat/completions`` (the subset a local model can honour)."""

    model: str
    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1)
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None

    @model_validator(mode="after")
    def _no_tools(self) -> ChatBody:
        if self.tools:
            raise ValueError("tools are not supported by this agent")
        return self


def parse_body(raw: bytes, model: type[_T]) -> _T:
    """Parse and validate a JSON body; a clear 400 for non-JSON or invalid fields."""
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as e:
        raise BadRequestError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        raise BadRequestError(f"{loc}: {msg}" if loc else msg, param=loc or None) from None


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def to_generation_request(body: InferBody | ChatBody) -> GenerationRequest:
    messages = tuple({"role": m.role, "content": m.text()} for m in body.messages or ())
    if isinstance(body, ChatBody):
        max_tokens = body.max_completion_tokens or body.max_tokens
        prompt, raw = None, False
    else:
        max_tokens, prompt, raw = body.max_tokens, body.prompt, body.raw
    return GenerationRequest(messages=messages, prompt=prompt, raw=raw, max_tokens=max_tokens,
                             min_tokens=body.min_tokens, temperature=body.temperature, top_p=body.top_p,
                             stop=_stops(body.stop), seed=body.seed)


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    return f"data: {data}\n\n".encode()


def infer_response(result: GenerationResult, model: str) -> dict[str, Any]:
    return {"text": result.text, "finish_reason": result.finish_reason, "usage": result.usage(), "model": model}


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def chat_response(result: GenerationResult, model: str, completion_id: str) -> dict[str, Any]:
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": result.usage(),
    }


def chat_chunk(completion_id: str, model: str, created: int, *, delta: dict[str, str] | None = None,
               finish_reason: str | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    choices = [] if usage is not None else [
        {"index": 0, "delta": delta or {}, "finish_reason": finish_reason, "logprobs": None}]
    chunk: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                             "model": model, "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    return chunk
