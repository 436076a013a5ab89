"""Select stage: the route's candidates, in fallback order (``ctx.candidates``).

``select_candidates`` is deliberately one small function: filters, scorers and pickers
(strategies) extend it. Dropped candidates stay in the list with ``kept=False`` and a reason,
for ``iir explain``, logs and the 503 message.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from iir.backends.base import Adapter
from iir.errors import BadRequestError, NoBackendError, PermissionDeniedError
from iir.pipeline.context import Candidate, Next, RequestContext, Stage
from iir.pipeline.route import model_not_found
from iir.pipeline.services import SERVICES, LiveAgents
from iir.plugins.selection import SelectionRequest, explain_header, select
from iir.policies.runtime import POLICIES, PolicyServices
from iir.policies.tokens import TokenCounter
from iir.table import Backend

__all__ = ["make_stage", "route_backends", "select_candidates", "selection_request"]

AGENTS_TARGET = "agents"
KEY_FILTER = "allowed-by-key:"  # the reason prefix of candidates the client key may not use


def _agents_for(ctx: RequestContext, live_agents: LiveAgents) -> tuple[Backend, ...]:
    """Live agents for target ``agents``: those serving the requested model; for a model no
    backend declares (an alias such as ``auto``), every live agent (it runs its own model)."""
    agents = live_agents(ctx.table, None)
    serving = tuple(a for a in agents if ctx.model in a.models)
    if serving or ctx.model in ctx.table.model_index:
        return serving
    return agents


def route_backends(ctx: RequestContext, live_agents: LiveAgents) -> list[Backend]:
    """The route's backends in order: named targets, ``agents`` expanded, or by-model."""
    table, route = ctx.table, ctx.route
    assert route is not None
    out: dict[str, Backend] = {}
    if route.by_model:
        for name in table.model_index.get(ctx.model, ()):
            out[name] = table.backends[name]
        for agent in live_agents(table, ctx.model):
            out.setdefault(agent.name, agent)
        return list(out.values())
    for target in route.targets:
        if target == AGENTS_TARGET:
            for agent in _agents_for(ctx, live_agents):
                out.setdefault(agent.name, agent)
        elif target in table.backends:
            out.setdefault(target, table.backends[target])
    return list(out.values())


def _drop_reason(ctx: RequestContext, backend: Backend, adapters: Mapping[str, Adapter]) -> str:
    if not backend.configured:
        return f"unconfigured ({backend.unconfigured_reason})"
    adapter = adapters.get(backend.protocol)
    if adapter is None:
        return f"no adapter for protocol {backend.protocol!r}"
    if ctx.endpoint not in adapter.endpoints:
        return f"does not serve /{ctx.endpoint}"
    if "tools" not in backend.capabilities and (ctx.body.get("tools") or ctx.body.get("functions")):
        return "no tools capability"
    if backend.protocol == "agent" and isinstance(n := ctx.body.get("n"), int) and n > 1:
        return f"one choice only (n={n})"  # the agent protocol answers one completion
    return ""


def selection_request(ctx: RequestContext, tokens: TokenCounter | None = None) -> SelectionRequest:
    """What the selection plugins look at: size, needs, key allow-list, affinity key."""
    body = ctx.body
    needs = set()
    if body.get("tools") or body.get("functions"):
        needs.add("tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        needs.add("json")
    prefix: list[str] = []
    for m in body.get("messages") or ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            if any(isinstance(p, dict) and p.get("type") in ("image_url", "input_image", "image") for p in content):
                needs.add("images")
        elif isinstance(content, str) and len(prefix) < 2:
            prefix.append(content[:256])
    if not ctx.prompt_tokens and tokens is not None:
        ctx.prompt_tokens = tokens.count_request(body, ctx.endpoint, ctx.model)
    affinity = ""
    if ctx.route is not None and ctx.route.strategy == "affinity":
        affinity = ctx.http.headers.get(ctx.route.affinity_header, "") or "\x00".join(
            prefix or [str(body.get("prompt", ""))[:256]])
    key = ctx.key
    return SelectionRequest(
        model=ctx.model, prompt_tokens=ctx.prompt_tokens, max_tokens=TokenCounter.completion_budget(body),
        needs=frozenset(needs), key_models=key.allows if key is not None and key.models_re is not None else None,
        affinity_key=affinity)


def select_candidates(ctx: RequestContext, live_agents: LiveAgents,
                      adapters: Mapping[str, Adapter], policies: PolicyServices | None = None) -> list[Candidate]:
    """Ordered candidates: the router's own checks, then the selection plugins (filters →
    strategy scores → pick order). Dropped ones follow with ``kept=False`` and the reason."""
    backends = route_backends(ctx, live_agents)
    dropped = {b.name: r for b in backends if (r := _drop_reason(ctx, b, adapters))}
    strategy = ctx.route.strategy if ctx.route is not None else "priority"
    health = policies.health_for(ctx.table) if policies is not None else None
    chosen = select(backends, selection_request(ctx, policies.tokens if policies else None), strategy, health,
                    dropped=dropped, rng=policies.rng if policies is not None else None)
    if ctx.route is not None:
        ctx.response_headers["x-iir-route"] = explain_header(ctx.route.name, chosen)
    return [Candidate(c.backend, kept=c.kept, reason=c.reason, score=c.score) for c in chosen.candidates]


#: Drop reasons that come from the request itself (its size or what it needs), not from the
#: state of the backends: when every candidate has one, no retry can succeed.
_CONTEXT = "context-window:"
REQUEST_BOUND = (_CONTEXT, "capability:", "no tools capability", "does not serve /", "one choice only")


def unservable(ctx: RequestContext) -> BadRequestError:
    """Every candidate was dropped for what the request is: a 400 (as OpenAI), not a 503 that
    SDKs would retry in vain. All for the context window: ``context_length_exceeded``."""
    why = "; ".join(f"{c.backend.name}: {c.reason}" for c in ctx.candidates)
    route = ctx.route.name if ctx.route else "?"
    too_long = all(c.reason.startswith(_CONTEXT) for c in ctx.candidates)
    what = "is too long for" if too_long else "needs what none offers of"
    return BadRequestError(f"this request for model {ctx.model!r} {what} the backends of route {route!r} ({why})",
                           param="messages" if too_long else None,
                           code="context_length_exceeded" if too_long else "unsupported_request")


def no_backend(ctx: RequestContext) -> NoBackendError:
    why = "; ".join(f"{c.backend.name}: {c.reason}" for c in ctx.candidates) or "the route has no backends"
    route = ctx.route.name if ctx.route else "?"
    return NoBackendError(f"no routable backend for model {ctx.model!r} on route {route!r} ({why})")


def make_stage(app: web.Application) -> Stage:
    services = app[SERVICES]
    policies = app.get(POLICIES)

    async def _select(ctx: RequestContext, nxt: Next) -> web.StreamResponse:
        ctx.candidates = select_candidates(ctx, services.live_agents, services.adapters, policies)
        if not ctx.candidates and ctx.route is not None and ctx.route.by_model:
            raise model_not_found(ctx.table, ctx.model)  # no backend declares it: an unknown model
        if not any(c.kept for c in ctx.candidates):
            if ctx.candidates and all(c.reason.startswith(KEY_FILTER) for c in ctx.candidates):
                raise PermissionDeniedError(
                    f"this API key may not use model {ctx.model!r}: it may not use the models of "
                    f"the backends of route {ctx.route.name if ctx.route else '?'!r}", param="model")
            if ctx.candidates and all(c.reason.startswith(REQUEST_BOUND) for c in ctx.candidates):
                raise unservable(ctx)
            raise no_backend(ctx)
        return await nxt(ctx)

    return _select
