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

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import web

from iir.errors import IIRError, NoBackendError
from iir.pipeline import auth, parse, relay, route, select
from iir.pipeline.context import Next, RequestContext, Stage
from iir.pipeline.services import open_services

__all__ = ["RESOURCES", "STAGES", "build_chain", "compose"]

StageFactory = Callable[[web.Application], Stage]
Resource = Callable[[web.Application], AsyncIterator[None]]


def _plain_log_stage(app: web.Application) -> Stage:
    """One plain log line per request (stand-in until the observe stage plugs in first)."""
    log = logging.getLogger("iir.request")

    async def plain_log(ctx: RequestContext, nxt: Next) -> web.StreamResponse:
        try:
            resp = await nxt(ctx)
        except IIRError as e:
            ctx.status, ctx.error = e.status, e.code or ""
            raise
        finally:
            if log.isEnabledFor(logging.INFO):
                log.info("%s %s model=%s route=%s backend=%s status=%s attempts=%s error=%s ms=%.1f",
                         ctx.request_id, ctx.endpoint, ctx.model or "-", ctx.route.name if ctx.route else "-",
                         ctx.backend or "-", ctx.status, ",".join(
                             f"{a.backend}:{a.status or a.error}" for a in ctx.attempts) or "-",
                         ctx.error or "-", (time.perf_counter() - ctx.started) * 1000)
        return resp

    return plain_log


#: Resources opened (in this order) before the stages are built; closed in reverse.
RESOURCES: tuple[Resource, ...] = (
    open_services,
)

#: Stage factories, outermost first.
STAGES: tuple[StageFactory, ...] = (
    _plain_log_stage,   # → observe.make_stage (observability) replaces this line
    parse.make_stage,
    auth.make_stage,
    # ratelimit (policies): key/model/global limits
    route.make_stage,
    # route ratelimit (policies), cache (policies)
    select.make_stage,
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
    async def run(ctx: RequestContext) -> web.StreamResponse:
        return await stage(ctx, nxt)

    return run


def build_chain(app: web.Application, factories: Sequence[StageFactory] = STAGES) -> Next:
    return compose([factory(app) for factory in factories])
