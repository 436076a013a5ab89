"""Route stage: the first rule whose match holds picks the route (``x-iir-route``).

Unknown models get a 404 listing what is available. Matching itself lives in
:mod:`iir.plugins.matching` (one implementation shared with ``iir explain``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from aiohttp import web

from iir.errors import ModelNotFoundError
from iir.pipeline.context import Next, RequestContext, Stage
from iir.plugins.matching import SemanticMatcher, estimate_tokens, features_from_body, match_route
from iir.policies.runtime import POLICIES
from iir.policies.tokens import TokenCounter
from iir.table import Route, RoutingTable

__all__ = ["find_route", "make_stage", "model_not_found", "needs_prompt_size"]


def model_not_found(table: RoutingTable, model: str) -> ModelNotFoundError:
    available = ", ".join(sorted(table.models)) or "none"
    return ModelNotFoundError(f"the model {model!r} does not exist or no route serves it; available models: {available}",
                              param="model")


class SemanticSource(Protocol):
    """The app's semantic matcher (iir.plugins.semantic.SemanticMatcher)."""

    def matcher_for(self, table: RoutingTable, text: str) -> Awaitable[SemanticMatcher | None]: ...


def _no_count(_text: str) -> int:
    return 0


def needs_prompt_size(routes: tuple[Route, ...]) -> bool:
    """Whether any of ``routes`` has a prompt-size condition (else matching skips counting)."""
    return any(r.match.prompt_tokens_min is not None or r.match.prompt_tokens_max is not None for r in routes)


async def find_route(ctx: RequestContext, tokens: TokenCounter | None = None,
                     semantic: SemanticSource | None = None) -> Route | None:
    """The first matching route. The prompt is counted (once, by the shared token counter) only
    when a candidate route has a prompt-size condition; later stages count lazily otherwise.
    ``semantic`` (the app's semantic matcher) is consulted only for tables with semantic rules."""
    count: Callable[[str], int] = _no_count
    if not ctx.prompt_tokens and needs_prompt_size(ctx.table.routes_for(ctx.model)):
        if tokens is not None:
            ctx.prompt_tokens = tokens.count_request(ctx.body, ctx.endpoint, ctx.model)
        else:
            count = estimate_tokens
    counted = ctx.prompt_tokens
    features = features_from_body(
        ctx.body, headers=ctx.http.headers, key_name=ctx.key.name if ctx.key else None,
        count_tokens=(lambda _text: counted) if counted else count)
    if not counted and count is not _no_count:
        ctx.prompt_tokens = features.prompt_tokens
    matcher = None
    if semantic is not None:
        matcher = await semantic.matcher_for(ctx.table, features.last_user_text)
    route, _ = match_route(ctx.table, features, semantic=matcher)
    return route


def has_semantic(table: RoutingTable) -> bool:
    """Whether any rule has a semantic condition."""
    return any(r.match.semantic_examples for r in table.routes)


def make_stage(app: web.Application) -> Stage:
    policies = app.get(POLICIES)
    tokens = policies.tokens if policies is not None else None
    semantic = cast("SemanticSource | None", policies.semantic if policies is not None else None)
    seen: dict[str, bool] = {}  # table digest → has a semantic rule (one entry: the live table)

    async def _route(ctx: RequestContext, nxt: Next) -> web.StreamResponse:
        uses_semantic = seen.get(ctx.table.digest)
        if uses_semantic is None:
            seen.clear()
            uses_semantic = seen[ctx.table.digest] = has_semantic(ctx.table)
        route = await find_route(ctx, tokens, semantic if uses_semantic else None)
        if route is None:
            raise model_not_found(ctx.table, ctx.model)
        ctx.route = route
        ctx.response_headers["x-iir-route"] = route.name
        return await nxt(ctx)

    return _route
