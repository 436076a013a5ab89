"""What the agent service asks of an inference engine, and the values they exchange.

An engine serves one model. :meth:`Engine.prepare` validates and tokenizes a request (raising
:class:`~iir.errors.BadRequestError` for anything the model cannot take, e.g. a prompt longer
than the context window); :meth:`Engine.generate` and :meth:`Engine.stream` run it. A
``threading.Event`` passed along cancels the generation (client gone).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from iir.errors import IIRError

__all__ = [
    "Engine",
    "EngineLoad",
    "EngineStartError",
    "GenerationRequest",
    "GenerationResult",
    "Prepared",
    "QueueFullError",
    "StopMatcher",
]


class QueueFullError(IIRError):
    """The agent's request queue is full: try again after ``Retry-After`` seconds."""

    status = 503
    type = "service_unavailable"
    code = "agent_busy"


class EngineStartError(Exception):
    """The engine could not start (missing weights, unreachable vLLM...). Message is user-facing."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated request, independent of the wire format it came in."""

    messages: tuple[dict[str, str], ...] = ()  # role/content pairs, content flattened to text
    prompt: str | None = None  # with raw=True: sent as is, without the chat template
    raw: bool = False
    max_tokens: int | None = None
    min_tokens: int = 0
    temperature: float | None = None  # None: the model's generation_config decides
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(slots=True)
class Prepared:
    """A request the engine accepted: its prompt tokens and the completion budget."""

    request: GenerationRequest
    prompt_tokens: int
    max_tokens: int
    payload: Any = None  # engine-specific (token ids, upstream body...)


@dataclass(slots=True)
class GenerationResult:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """Engine-side load: ``running``/``waiting`` requests as the engine itself sees them."""

    running: int = 0
    waiting: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    kind: str  # "transformers" | "vllm"
    model: str  # the served model name
    device: str
    context_window: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def prepare(self, request: GenerationRequest) -> Prepared: ...

    async def generate(self, prepared: Prepared, cancel: threading.Event) -> GenerationResult: ...

    def stream(self, prepared: Prepared, cancel: threading.Event) -> AsyncIterator[str | GenerationResult]:
        """Text deltas, then exactly one :class:`GenerationResult` as the last item."""
        ...

    async def load(self) -> EngineLoad: ...


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back a possible partial match."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._buffer = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Text that is safe to emit now ("" once stopped)."""
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        self._buffer += delta
        cut = min((i for i in (self._buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._buffer = self._buffer[:cut], ""
            return out
        safe = len(self._buffer) - self._hold
        if safe <= 0:
            return ""
        out, self._buffer = self._buffer[:safe], self._buffer[safe:]
        return out

    def flush(self) -> str:
        out, self._buffer = ("" if self.stopped else self._buffer), ""
        return out

    @staticmethod
    def cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
        """``text`` cut at the earliest stop sequence, and whether one was found."""
        idx = [i for i in (text.find(s) for s in stops if s) if i >= 0]
        return (text[: min(idx)], True) if idx else (text, False)
