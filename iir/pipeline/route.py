"""Route stage: the first rule whose match holds picks the route (``x-iir-route``).

Unknown models get a 404 listing what is available. Matching itself lives in
:mod:`iir.plugins.matching` (one implementation shared with ``iir explain``).
"""

from __future__ import annotations

from aiohttp import web

from iir.errors import ModelNotFoundError
from iir.pipeline.context import Next, RequestContext, Stage
from iir.table import Route, RoutingTable

__all__ = ["find_route", "make_stage", "model_not_found"]


def model_not_found(table: RoutingTable, model: str) -> ModelNotFoundError:
    available = ", ".join(sorted(table.models)) or "none"
    return ModelNotFoundError(f"the model {model!r} does not exist or no route serves it; available models: {available}",
                              param="model")


def _last_user_text(ctx: RequestContext) -> str:
    body = ctx.body
    if ctx.endpoint == "chat":
        for m in reversed(body.get("messages", ())):
            if isinstance(m, dict) and m.get("role") == "user":
                content = m.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return ""
    prompt = body.get("prompt", body.get("input", ""))
    return prompt if isinstance(prompt, str) else ""


def find_route(ctx: RequestContext) -> Route | None:
    """First matching route (interim matcher until iir.plugins.matching.match_route lands)."""
    model = ctx.model
    tools = bool(ctx.body.get("tools") or ctx.body.get("functions"))
    headers = ctx.http.headers
    key_name = ctx.key.name if ctx.key else None
    text: str | None = None
    for route in ctx.table.routes_for(model):
        m = route.match
        if not m.model_matches(model):
            continue
        if m.tools is not None and m.tools != tools:
            continue
        if m.keys and key_name not in m.keys:
            continue
        if any(p.match(headers.get(h, "")) is None or h not in headers for h, p in m.headers):
            continue
        if m.prompt_tokens_min is not None or m.prompt_tokens_max is not None:
            n = ctx.prompt_tokens or len(ctx.raw) // 4
            if (m.prompt_tokens_min is not None and n < m.prompt_tokens_min) or (
                    m.prompt_tokens_max is not None and n > m.prompt_tokens_max):
                continue
        if m.regex is not None or m.keywords:
            text = _last_user_text(ctx) if text is None else text
            if m.regex is not None and m.regex.search(text) is None:
                continue
            if m.keywords and not any(k in text.lower() for k in m.keywords):
                continue
        return route
    return None


async def _route(ctx: RequestContext, nxt: Next) -> web.StreamResponse:
    route = find_route(ctx)
    if route is None:
        raise model_not_found(ctx.table, ctx.model)
    ctx.route = route
    ctx.response_headers["x-iir-route"] = route.name
    return await nxt(ctx)


def make_stage(app: web.Application) -> Stage:
    return _route
