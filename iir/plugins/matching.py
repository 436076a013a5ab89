"""Route matching: which rule of a compiled table handles a request, and which backends it offers.

Pure functions over a :class:`~iir.table.RoutingTable`, shared by the router's route/select
stages (hot path) and ``iir explain`` (with a trace of why each rule and backend was kept or
dropped). Only routes that can match the requested model are visited
(:meth:`RoutingTable.routes_for`), and every pattern was compiled once by the compiler.

Semantic conditions need an embedding model, which lives above this layer: pass a
``semantic(route, text) -> bool`` callable. Without one, a route with a semantic condition
does not match (and the trace says so).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from iir.table import Backend, Route, RoutingTable

__all__ = [
    "AGENTS_TARGET",
    "CandidateVerdict",
    "RequestFeatures",
    "RouteVerdict",
    "SemanticMatcher",
    "candidates",
    "estimate_tokens",
    "features_from_body",
    "match_route",
]

AGENTS_TARGET = "agents"
SemanticMatcher = Callable[[Route, str], bool]
_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What route matching looks at. ``headers`` must be keyed by lower-case names (an
    aiohttp ``CIMultiDictProxy`` also works)."""

    model: str
    prompt_tokens: int = 0
    has_tools: bool = False
    has_images: bool = False
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    key_name: str | None = None
    last_user_text: str = ""


@dataclass(frozen=True, slots=True)
class RouteVerdict:
    route: str
    index: int
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class CandidateVerdict:
    name: str
    kept: bool
    reason: str
    backend: Backend | None = None


def estimate_tokens(text: str) -> int:
    """A rough token count (about 4 characters per token, at least one word per token).

    Deliberately simple; callers that have a real tokenizer-backed counter
    (``iir.policies.tokens``) should pass its count in :class:`RequestFeatures` instead."""
    if not text:
        return 0
    return max(len(text.split()), (len(text) + 3) // 4)


def _text_of(content: Any) -> tuple[str, bool]:
    """(text, has_image) of an OpenAI message ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content, False
    if not isinstance(content, list):
        return "", False
    texts, image = [], False
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "input_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image", "image"):
            image = True
    return "\n".join(texts), image


def features_from_body(body: Mapping[str, Any], *, headers: Mapping[str, str] = _EMPTY,
                       key_name: str | None = None,
                       count_tokens: Callable[[str], int] = estimate_tokens) -> RequestFeatures:
    """Features of an OpenAI chat/completions request body. ``count_tokens`` counts the prompt text."""
    messages = body.get("messages")
    texts: list[str] = []
    last_user, images = "", False
    if isinstance(messages, list):
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            text, image = _text_of(msg.get("content"))
            texts.append(text)
            images = images or image
            if msg.get("role") == "user":
                last_user = text
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = "\n".join(p for p in prompt if isinstance(p, str))
        last_user = prompt if isinstance(prompt, str) else ""
        texts.append(last_user)
    tools = bool(body.get("tools") or body.get("functions"))
    model = body.get("model")
    return RequestFeatures(
        model=model if isinstance(model, str) else "", prompt_tokens=count_tokens("\n".join(texts)),
        has_tools=tools, has_images=images, headers=headers, key_name=key_name, last_user_text=last_user,
    )


def _why_not(route: Route, f: RequestFeatures, semantic: SemanticMatcher | None) -> str | None:
    """``None`` when ``route`` matches ``f``, else the first condition that fails."""
    mt = route.match
    if not mt.model_matches(f.model):
        return f"model {f.model!r} is not one of {list(mt.model_patterns)}"
    if mt.keys and f.key_name not in mt.keys:
        return f"client key {f.key_name!r} is not one of {sorted(mt.keys)}"
    if mt.tools is not None and mt.tools != f.has_tools:
        return "needs tools" if mt.tools else "request has tools"
    if mt.images is not None and mt.images != f.has_images:
        return "needs image input" if mt.images else "request has image input"
    if mt.prompt_tokens_min is not None and f.prompt_tokens < mt.prompt_tokens_min:
        return f"prompt has {f.prompt_tokens} tokens, fewer than min {mt.prompt_tokens_min}"
    if mt.prompt_tokens_max is not None and f.prompt_tokens > mt.prompt_tokens_max:
        return f"prompt has {f.prompt_tokens} tokens, more than max {mt.prompt_tokens_max}"
    for name, pattern in mt.headers:
        value = f.headers.get(name)
        if value is None:
            return f"header {name!r} is absent"
        if pattern.match(value) is None:
            return f"header {name!r} does not match"
    if mt.regex is not None and mt.regex.search(f.last_user_text) is None:
        return f"last user message does not match regex {mt.regex.pattern!r}"
    if mt.keywords:
        lowered = f.last_user_text.lower()
        if not any(k in lowered for k in mt.keywords):
            return f"last user message has none of the keywords {list(mt.keywords)}"
    if mt.semantic_examples:
        if semantic is None:
            return "semantic condition, but no semantic matcher is available"
        if not semantic(route, f.last_user_text):
            score = getattr(semantic, "scores", {}).get(route.name)
            if score is None:
                return "last user message is not similar enough to the examples"
            return (f"last user message is not similar enough to the examples "
                    f"(similarity {score:.2f} < threshold {mt.semantic_threshold:.2f})")
    return None


def match_route(table: RoutingTable, features: RequestFeatures, *, semantic: SemanticMatcher | None = None,
                trace: bool = False) -> tuple[Route | None, tuple[RouteVerdict, ...]]:
    """The first route of ``table`` matching ``features``, and (with ``trace=True``) a verdict
    for every route considered, in order. Without ``trace`` the second value is ``()``."""
    if not trace:
        for route in table.routes_for(features.model):
            if _why_not(route, features, semantic) is None:
                return route, ()
        return None, ()
    verdicts: list[RouteVerdict] = []
    considered = {r.index for r in table.routes_for(features.model)}
    found: Route | None = None
    for route in table.routes:
        if found is not None:
            verdicts.append(RouteVerdict(route.name, route.index, False, f"not reached: {found.name!r} matched first"))
            continue
        reason = _why_not(route, features, semantic) if route.index in considered else (
            f"model {features.model!r} is not one of {list(route.match.model_patterns)}")
        if reason is None:
            found = route
            verdicts.append(RouteVerdict(route.name, route.index, True, "all conditions hold"))
        else:
            verdicts.append(RouteVerdict(route.name, route.index, False, reason))
    return found, tuple(verdicts)


def _verdict(b: Backend, f: RequestFeatures, *, need_model: bool) -> CandidateVerdict:
    if not b.configured:
        return CandidateVerdict(b.name, False, f"not configured: {b.unconfigured_reason}", b)
    if need_model and not b.serves(f.model):
        return CandidateVerdict(b.name, False, f"does not serve model {f.model!r}", b)
    if f.has_tools and "tools" not in b.capabilities:
        return CandidateVerdict(b.name, False, "does not support tools", b)
    if f.has_images and "images" not in b.capabilities:
        return CandidateVerdict(b.name, False, "does not support image input", b)
    if b.context_window is not None and f.prompt_tokens >= b.context_window:
        return CandidateVerdict(b.name, False, f"prompt ({f.prompt_tokens} tokens) does not fit its context window ({b.context_window})", b)
    return CandidateVerdict(b.name, True, f"sends model {b.upstream_model(f.model)!r}", b)


def candidates(table: RoutingTable, route: Route, features: RequestFeatures,
               agents: tuple[Backend, ...] = ()) -> tuple[CandidateVerdict, ...]:
    """Every backend ``route`` offers for ``features``, in fallback order, each kept or dropped
    with a reason. ``agents`` are the live registered agents (for the ``agents`` target and for
    ``by-model``). Ordering by strategy (least-loaded, cheapest, ...) is the selector's job."""
    out: list[CandidateVerdict] = []
    if route.by_model:
        for name in table.model_index.get(features.model, ()):
            out.append(_verdict(table.backends[name], features, need_model=True))
        out.extend(_verdict(a, features, need_model=True) for a in agents)
        if not out:
            out.append(CandidateVerdict(features.model, False, f"no backend declares model {features.model!r}"))
        return tuple(out)
    for name in route.targets:
        if name == AGENTS_TARGET:
            if not agents:
                out.append(CandidateVerdict(AGENTS_TARGET, False, "no live registered agent"))
            out.extend(_verdict(a, features, need_model=False) for a in agents)
            continue
        backend = table.backends.get(name)
        if backend is None:
            out.append(CandidateVerdict(name, False, "unknown backend"))
        else:
            out.append(_verdict(backend, features, need_model=False))
    return tuple(out)
