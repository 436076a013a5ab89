"""The per-app policy services (stores, limiter, cache, health, token counter, semantic matcher),
stored on the aiohttp app under :data:`POLICIES` and opened/closed by :func:`open_policies`.

Stores are opened lazily per ``(kind, redis_url)`` the first time a table asks for them, so a
reload that switches ``state.store`` (or the cache's store) gets the new store without a
restart, and a router with no Redis configured never imports the Redis client.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from iir.policies.cache import ResponseCache
from iir.policies.health import CircuitSettings, HealthBoard, MetricsScraper
from iir.policies.ratelimit import RateLimiter
from iir.policies.store import StateStore, open_store
from iir.policies.tokens import TokenCounter, wants_vocabulary
from iir.table import Backend, HealthSettings, RoutingTable

__all__ = ["POLICIES", "PolicyServices", "open_policies"]


@dataclass(slots=True)
class PolicyServices:
    """Everything the policy stages and the selector share within one router process."""

    tokens: TokenCounter = field(default_factory=TokenCounter)
    health: HealthBoard = field(default_factory=HealthBoard)
    rng: random.Random = field(default_factory=random.Random)  # weighted strategy; one per app
    _stores: dict[tuple[str, str], StateStore] = field(default_factory=dict)
    _limiters: dict[int, RateLimiter] = field(default_factory=dict)
    _caches: dict[int, ResponseCache] = field(default_factory=dict)
    semantic: object | None = None  # iir.plugins.semantic.SemanticMatcher, set by the server
    token_warmup: asyncio.Future[str] | None = None  # the tiktoken load in a thread, once started
    _health_settings: HealthSettings | None = None

    def warm_tokens(self, table: RoutingTable) -> asyncio.Future[str] | None:
        """Load the tiktoken vocabulary in a background thread when ``table`` serves an
        OpenAI-family model, so the first such request does not pay for it (~0.2 s) and
        readiness does not wait. A table without one never loads it (~27 MB). The server
        calls it once it is listening (loaded amid the start-up's own allocations it left ~8 MB
        of fragmented heap behind) and after each reload. Returns the running load, or ``None``."""
        if self.token_warmup is None and not self.tokens.loaded and wants_vocabulary(table):
            self.token_warmup = asyncio.ensure_future(asyncio.to_thread(self.tokens.load))
        return self.token_warmup

    def health_for(self, table: RoutingTable) -> HealthBoard:
        """The health board, configured with ``table.health`` (``policies.health``; follows reloads)."""
        h = table.health
        if h is not self._health_settings:
            self._health_settings = h
            self.health.settings = CircuitSettings(h.failures, h.cooldown, h.queue_timeout,
                                                   self.health.settings.ewma_alpha)
        return self.health

    def store(self, table: RoutingTable, kind: str | None = None) -> StateStore:
        kind = kind or table.state.store
        ident = (kind, (table.state.redis_url or "") if kind == "redis" else "")
        st = self._stores.get(ident)
        if st is None:
            st = self._stores[ident] = open_store(table.state, store=kind)
        return st

    def limiter(self, table: RoutingTable) -> RateLimiter:
        st = self.store(table)
        lim = self._limiters.get(id(st))
        if lim is None:
            lim = self._limiters[id(st)] = RateLimiter(st)
        return lim

    def cache(self, table: RoutingTable) -> ResponseCache:
        st = self.store(table, table.cache.store)
        c = self._caches.get(id(st))
        if c is None:
            c = self._caches[id(st)] = ResponseCache(st)
        return c

    async def close(self) -> None:
        stores, self._stores = list(self._stores.values()), {}
        self._limiters.clear()
        self._caches.clear()
        for st in stores:
            await st.close()


POLICIES = web.AppKey("iir.policies", PolicyServices)


def open_policies(get_table: Callable[[], RoutingTable] | None = None, *,
                  circuit: CircuitSettings | None = None,
                  semantic_factory: Callable[[], object] | None = None,
                  on_health_change: Callable[[str, bool], None] | None = None,
                  scrape_interval: float = 2.0) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` that creates :class:`PolicyServices` at ``app[POLICIES]``; with
    ``get_table`` it also scrapes vLLM/llm-d ``/metrics`` into the health board.
    ``semantic_factory`` (e.g. ``iir.plugins.semantic.SemanticMatcher``, which this layer cannot
    import) builds the semantic matcher; it loads its model lazily. ``on_health_change(name,
    healthy)`` is called when a circuit opens or closes (e.g. the backend-health gauge)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        services = PolicyServices(health=HealthBoard(circuit, on_health_change=on_health_change))
        if semantic_factory is not None:
            services.semantic = semantic_factory()
        app[POLICIES] = services
        task: asyncio.Task[None] | None = None
        warm: asyncio.Future[object] | None = None
        prepare = getattr(services.semantic, "prepare_async", None)
        if get_table is not None and prepare is not None:
            # load the embedding model and embed the examples now, not on the first request
            warm = asyncio.ensure_future(prepare(get_table()))
        if get_table is not None:
            def backends() -> Mapping[str, Backend]:
                return get_table().backends

            task = asyncio.create_task(MetricsScraper(services.health, backends, interval=scrape_interval).run())
        try:
            yield
        finally:
            for t in (task, warm, services.token_warmup):
                if t is not None:
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, RuntimeError, OSError):
                        await t
            await services.close()
            close = getattr(services.semantic, "close", None)
            if close is not None:
                close()

    return ctx
