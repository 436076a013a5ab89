"""Per-app services the request stages use, stored on the app under :data:`SERVICES`.

Opened and closed by the server's ``cleanup_ctx``; nothing here is module-level state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from iir.backends.base import Adapter
from iir.table import Backend, RoutingTable

__all__ = ["CURRENT_TABLE", "SERVICES", "LiveAgents", "Services", "no_agents", "open_services"]

#: (table, requested model or None for any) → live registered agents as dynamic backends.
LiveAgents = Callable[[RoutingTable, "str | None"], tuple[Backend, ...]]


def no_agents(table: RoutingTable, model: str | None) -> tuple[Backend, ...]:
    return ()


@dataclass(slots=True)
class Services:
    http: aiohttp.ClientSession
    adapters: Mapping[str, Adapter]
    live_agents: LiveAgents = no_agents
    timeouts: dict[object, aiohttp.ClientTimeout] = field(default_factory=dict)  # per Timeouts value


SERVICES = web.AppKey("iir.services", Services)
#: The live table getter of this process (set by the server before start-up; reload-aware).
CURRENT_TABLE: web.AppKey[Callable[[], RoutingTable]] = web.AppKey(
    "iir.current_table", Callable[[], RoutingTable])  # type: ignore[arg-type]


async def open_services(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one pooled keep-alive client session for every upstream, and the adapters."""
    from iir.backends.adapters import load_adapters

    adapters = load_adapters()
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    # No cookie jar: one session serves every client, so an upstream's Set-Cookie (CDN bot cookies)
    # must not be stored and replayed on other clients' requests (nor filtered on each request).
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False,
                                    skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar())
    app[SERVICES] = Services(http=session, adapters=adapters)
    try:
        yield
    finally:
        await session.close()
