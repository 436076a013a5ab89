"""Per-request state passed through the pipeline stages.

A stage is ``async def stage(ctx: RequestContext, nxt: Next) -> web.StreamResponse``; it may
answer itself (cache hit, 429) or ``return await nxt(ctx)``. The order of stages is defined in
one place (:mod:`iir.pipeline.chain`). ``ctx.table`` is pinned at request start: a reload
never changes the table under a running request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from iir.table import Backend, ClientKey, Route, RoutingTable

__all__ = ["Attempt", "Candidate", "Next", "RequestContext", "Stage"]


@dataclass(slots=True)
class Candidate:
    """A backend considered for this request, with the reason it was kept or dropped."""

    backend: Backend
    kept: bool = True
    reason: str = ""  # why dropped ("circuit open", "context window 512 < 900", ...)
    score: float | None = None


@dataclass(slots=True)
class Attempt:
    """One upstream try, for the log line, metrics and ``x-iir-attempts``."""

    backend: str
    status: int | None = None  # upstream HTTP status, None when no response
    error: str = ""  # "connect", "timeout", "http_500", ...
    seconds: float = 0.0


@dataclass(slots=True)
class RequestContext:
    http: web.Request
    table: RoutingTable
    request_id: str
    endpoint: str  # "chat" | "completions" | "embeddings" | "messages"
    started: float = field(default_factory=time.perf_counter)
    raw: bytes = b""  # the request body as received
    body: dict[str, Any] = field(default_factory=dict)  # parsed once
    model: str = ""  # as the client asked
    stream: bool = False
    key: ClientKey | None = None
    prompt_tokens: int = 0  # estimate before the call
    route: Route | None = None
    candidates: list[Candidate] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    backend: str | None = None  # the backend that answered
    upstream_seconds: float = 0.0  # time spent waiting on upstreams (excluded from overhead)
    client_seconds: float = 0.0  # time spent waiting on a slow client's body (excluded from overhead)
    first_byte_at: float | None = None  # perf_counter when the first byte went to the client
    status: int = 0
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens / completion_tokens
    cache: str = "off"  # hit | miss | bypass | off
    ratelimit: str = "off"  # ok | limited | off | fail-open
    error: str = ""  # error code when the request failed
    response_headers: dict[str, str] = field(default_factory=dict)  # added to the response
    extras: dict[str, Any] = field(default_factory=dict)  # stage-specific data

    @property
    def overhead_ms(self) -> float:
        return max(0.0, (time.perf_counter() - self.started - self.upstream_seconds - self.client_seconds) * 1000.0)


Next = Callable[[RequestContext], Awaitable[web.StreamResponse]]
Stage = Callable[[RequestContext, Next], Awaitable[web.StreamResponse]]
