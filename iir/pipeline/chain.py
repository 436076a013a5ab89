"""THE request pipeline: the one place that defines which stages run, and in what order.

A stage is ``async (ctx, nxt) -> web.StreamResponse`` (see :mod:`iir.pipeline.context`).
To plug a stage in, import its module and add ONE line to :data:`STAGES` (its factory,
called once per app after every resource is open) and, if it owns resources (a store, a
metrics registry, ...), one line to :data:`RESOURCES` (a ``cleanup_ctx`` function that stores
them on the app under the module's own ``web.AppKey``).

Stages raise :class:`iir.errors.IIRError`; the HTTP boundary (:mod:`iir.server.handlers`)
turns it into OpenAI's error JSON, so an outer stage sees the exception propagate. The relay
finishes writing a stream before it returns, so an outer stage sees the whole request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import web

from iir.errors import NoBackendError
from iir.observability.metrics import METRICS_KEY
from iir.pipeline import auth, cache, observe, parse, ratelimit, relay, route, select
from iir.pipeline.context import Next, RequestContext, Stage
from iir.pipeline.services import CURRENT_TABLE, open_services
from iir.plugins.semantic import SemanticMatcher
from iir.policies.runtime import open_policies

__all__ = ["RESOURCES", "STAGES", "build_chain", "compose"]

StageFactory = Callable[[web.Application], Stage]
Resource = Callable[[web.Application], AsyncIterator[None]]


def _open_policies(app: web.Application) -> AsyncIterator[None]:
    """Policy services (token counter, health board, stores, semantic matcher) for the stages."""
    metrics = app.get(METRICS_KEY)  # circuit transitions → iir_backend_healthy
    return open_policies(app[CURRENT_TABLE], semantic_factory=SemanticMatcher,
                         on_health_change=metrics.set_backend_health if metrics is not None else None)(app)


#: Resources opened (in this order) before the stages are built; closed in reverse.
RESOURCES: tuple[Resource, ...] = (
    open_services,
    _open_policies,
)

#: Stage factories, outermost first.
STAGES: tuple[StageFactory, ...] = (
    observe.make_stage,  # outermost: sees every outcome, logs one line, counts metrics
    parse.make_stage,
    auth.make_stage,
    ratelimit.make_stage,  # key / model / global limits
    route.make_stage,
    ratelimit.make_route_stage,  # per-route limits
    cache.make_stage,
    select.make_stage,
    ratelimit.make_backend_stage,  # per-backend limits: drops candidates out of room
    relay.make_stage,
)


async def _end(ctx: RequestContext) -> web.StreamResponse:
    raise NoBackendError("the request pipeline ended without an answer")


def compose(stages: Sequence[Stage]) -> Next:
    """Chain stages so each one's ``nxt`` is the next; returns the entry point."""
    nxt: Next = _end
    for stage in reversed(stages):
        nxt = _link(stage, nxt)
    return nxt


def _link(stage: Stage, nxt: Next) -> Next:
    # A plain function handing back the stage's coroutine: no extra coroutine frame per stage,
    # which every suspension of the innermost await would otherwise pass through.
    def run(ctx: RequestContext) -> Awaitable[web.StreamResponse]:
        return stage(ctx, nxt)

    return run


def build_chain(app: web.Application, factories: Sequence[StageFactory] = STAGES) -> Next:
    return compose([factory(app) for factory in factories])
