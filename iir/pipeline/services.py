"""Per-app services the request stages use, stored on the app under :data:`SERVICES`.

Opened and closed by the server's ``cleanup_ctx``; nothing here is module-level state.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from iir.backends.base import Adapter
from iir.table import Backend, RoutingTable

__all__ = ["CURRENT_TABLE", "SERVICES", "LiveAgents", "Services", "UpstreamConnector", "no_agents", "open_services"]

#: (table, requested model or None for any) → live registered agents as dynamic backends.
LiveAgents = Callable[[RoutingTable, "str | None"], tuple[Backend, ...]]


def no_agents(table: RoutingTable, model: str | None) -> tuple[Backend, ...]:
    return ()


class UpstreamConnector(aiohttp.TCPConnector):
    """The upstream pool. Once a request has its connection (new or reused), it moves the
    attempt's deadline to ``first_byte`` from now: a backend's first-byte timeout runs from
    sending the request, not from the start of the attempt (connect is bounded on its own)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        #: (deadline to move, first_byte seconds) of the attempt running in this context.
        self.first_byte: contextvars.ContextVar[tuple[asyncio.Timeout, float] | None] = contextvars.ContextVar(
            "iir_first_byte", default=None)

    async def connect(self, req: Any, traces: Any, timeout: aiohttp.ClientTimeout) -> Any:
        conn = await super().connect(req, traces, timeout)
        pending = self.first_byte.get()
        if pending is not None:
            deadline, first_byte = pending
            when = deadline.when()
            due = asyncio.get_running_loop().time() + first_byte
            if when is None or due < when:  # never later than the attempt's total
                deadline.reschedule(due)
        return conn


@dataclass(slots=True)
class Services:
    http: aiohttp.ClientSession
    adapters: Mapping[str, Adapter]
    live_agents: LiveAgents = no_agents
    timeouts: dict[object, aiohttp.ClientTimeout] = field(default_factory=dict)  # per Timeouts value
    connector: UpstreamConnector | None = None  # the session's, when it moves first-byte deadlines


SERVICES = web.AppKey("iir.services", Services)
#: The live table getter of this process (set by the server before start-up; reload-aware).
CURRENT_TABLE: web.AppKey[Callable[[], RoutingTable]] = web.AppKey(
    "iir.current_table", Callable[[], RoutingTable])  # type: ignore[arg-type]


async def open_services(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one pooled keep-alive client session for every upstream, and the adapters."""
    from iir.backends.adapters import load_adapters

    adapters = load_adapters()
    connector = UpstreamConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    # No cookie jar: one session serves every client, so an upstream's Set-Cookie (CDN bot cookies)
    # must not be stored and replayed on other clients' requests (nor filtered on each request).
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False,
                                    skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar())
    app[SERVICES] = Services(http=session, adapters=adapters, connector=connector)
    try:
        yield
    finally:
        await session.close()
