"""Rate-limit stages.

* :func:`make_stage` (after auth): policies scoped per key, model or global — named by the
  client key, plus unreferenced (default) policies. It also counts the prompt tokens once
  (``ctx.prompt_tokens``) with the app's token counter if nobody did yet.
* :func:`make_route_stage` (after route): the matched route's policies, and the key's policies
  scoped ``per: route``.
* :func:`make_backend_stage` (after select): policies scoped ``per: backend``; a candidate whose
  backend is out of room is dropped and the next one is charged (the relay falls back).

Both reserve the estimated prompt tokens and, after the response is done, settle them with the
real usage (``ctx.usage``; a cache hit costs no tokens). Refusals raise
:class:`~iir.errors.RateLimitedError` (429) with ``Retry-After`` and ``x-ratelimit-*``.
"""

from __future__ import annotations

from collections.abc import Awaitable

from aiohttp import web

from iir.errors import IIRError, RateLimitedError
from iir.pipeline.context import Next, RequestContext, Stage
from iir.policies.ratelimit import PRE_ROUTE_SCOPES, Reservation, limits_for
from iir.policies.runtime import POLICIES, PolicyServices
from iir.policies.store import StateUnavailableError

__all__ = ["make_backend_stage", "make_route_stage", "make_stage", "scope_ids"]


def scope_ids(ctx: RequestContext) -> dict[str, str]:
    """The value of each limit scope for this request (``key`` falls back to the client IP)."""
    ids = {"model": ctx.model}
    ids["key"] = ctx.key.name if ctx.key else f"ip:{ctx.http.remote or 'unknown'}"
    if ctx.route is not None:
        ids["route"] = ctx.route.name
    return ids


def _used_tokens(ctx: RequestContext) -> int | None:
    if ctx.cache == "hit":
        return 0
    if not ctx.usage:
        return None if ctx.status in (0, 200) else 0  # failed before any upstream work: refund
    return int(ctx.usage.get("prompt_tokens", 0)) + int(ctx.usage.get("completion_tokens", 0))


async def _run(ctx: RequestContext, nxt: Next, services: PolicyServices, pre_route: bool) -> web.StreamResponse:
    table = ctx.table
    if not table.limits:
        return await nxt(ctx)
    key_limits = ctx.key.limits if ctx.key else ()
    if pre_route:
        limits = [lm for lm in limits_for(table, key_limits, ()) if lm.per in PRE_ROUTE_SCOPES]
    else:
        route_limits = ctx.route.limits if ctx.route else ()
        limits = [lm for lm in limits_for(table, key_limits, route_limits)
                  if lm.per == "route" or (lm.per in PRE_ROUTE_SCOPES and lm.name in route_limits
                                           and lm.name not in key_limits)]
    if not limits:
        return await nxt(ctx)
    if not ctx.prompt_tokens:
        ctx.prompt_tokens = services.tokens.count_request(ctx.body, ctx.endpoint, ctx.model)
    limiter = services.limiter(table)
    try:
        reservation = await limiter.admit(limits, scope_ids(ctx), ctx.prompt_tokens)
    except RateLimitedError:
        ctx.ratelimit = "limited"
        raise
    except StateUnavailableError:
        ctx.ratelimit = "fail-closed"
        raise
    if ctx.ratelimit != "fail-open":  # a later stage never hides an earlier fail-open
        ctx.ratelimit = "fail-open" if reservation.fail_open else "ok"
    ctx.response_headers.update(reservation.headers)
    prior = ctx.extras.get("ratelimit")
    if isinstance(prior, Reservation):
        prior.merge(reservation)
    else:
        ctx.extras["ratelimit"] = reservation
    try:
        resp = await nxt(ctx)
    except IIRError:
        await limiter.settle(reservation, _used_tokens(ctx) if ctx.usage else 0)
        raise
    await limiter.settle(reservation, _used_tokens(ctx))
    return resp


async def _run_backend(ctx: RequestContext, nxt: Next, services: PolicyServices) -> web.StreamResponse:
    """``per: backend`` policies: charge the first kept candidate that has room; candidates whose
    backend is out of room are dropped (reason ``rate-limit``) so the relay falls back past them."""
    table = ctx.table
    if not table.limits:
        return await nxt(ctx)
    route_limits = ctx.route.limits if ctx.route else ()
    limits = [lm for lm in limits_for(table, ctx.key.limits if ctx.key else (), route_limits) if lm.per == "backend"]
    if not limits:
        return await nxt(ctx)
    limiter = services.limiter(table)
    ids = scope_ids(ctx)
    refusal: RateLimitedError | None = None
    reservation: Reservation | None = None
    for cand in ctx.candidates:
        if not cand.kept:
            continue
        try:
            reservation = await limiter.admit(limits, {**ids, "backend": cand.backend.name}, ctx.prompt_tokens)
            break
        except RateLimitedError as e:
            cand.kept, cand.reason = False, f"rate-limit: {e.message}"
            refusal = refusal or e
        except StateUnavailableError:
            ctx.ratelimit = "fail-closed"
            raise
    if reservation is None:
        if refusal is not None:
            ctx.ratelimit = "limited"
            raise refusal
        return await nxt(ctx)
    if ctx.ratelimit != "fail-open":  # the log line and metrics see backend limits too
        ctx.ratelimit = "fail-open" if reservation.fail_open else "ok"
    ctx.response_headers.update(reservation.headers)
    try:
        resp = await nxt(ctx)
    except IIRError:
        await limiter.settle(reservation, _used_tokens(ctx) if ctx.usage else 0)
        raise
    await limiter.settle(reservation, _used_tokens(ctx))
    return resp


def make_backend_stage(app: web.Application) -> Stage:
    """After select: ``per: backend`` limits."""
    services = app[POLICIES]

    def backend_ratelimit(ctx: RequestContext, nxt: Next) -> Awaitable[web.StreamResponse]:
        return _run_backend(ctx, nxt, services)

    return backend_ratelimit


def make_stage(app: web.Application) -> Stage:
    services = app[POLICIES]

    def ratelimit(ctx: RequestContext, nxt: Next) -> Awaitable[web.StreamResponse]:
        return _run(ctx, nxt, services, pre_route=True)

    return ratelimit


def make_route_stage(app: web.Application) -> Stage:
    services = app[POLICIES]

    def route_ratelimit(ctx: RequestContext, nxt: Next) -> Awaitable[web.StreamResponse]:
        return _run(ctx, nxt, services, pre_route=False)

    return route_ratelimit
