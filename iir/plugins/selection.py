"""Backend selection plugins: filters → scorers → picker (the Gateway API Inference Extension
/ llm-d scheduler shape), registered by kebab-case type name.

* A **filter** drops a candidate with a reason (``healthy``, ``context-window``,
  ``capability``, ``allowed-by-key``).
* A **strategy** (``routes[].strategy``) scores the kept candidates and orders them; the picker
  takes them in that order and the relay falls back along it. Strategies: ``priority``,
  ``weighted``, ``least-loaded``, ``lowest-latency``, ``cheapest``, ``affinity``.

Every decision is explained: each candidate ends up with ``kept``, ``reason`` and ``score``,
which ``iir explain``, logs and the ``x-iir-route`` header show (:func:`explain_header`).

Health and load come through the :class:`HealthView` protocol (the policies layer's
``HealthBoard`` implements it); this module holds no state.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from iir.table import Backend

__all__ = [
    "FILTERS",
    "STRATEGIES",
    "HealthView",
    "Scored",
    "SelectionRequest",
    "explain_header",
    "rendezvous_order",
    "select",
]


class HealthView(Protocol):
    def available(self, name: str) -> tuple[bool, str]: ...
    def load(self, name: str) -> float: ...
    def ttft(self, name: str) -> float | None: ...


class NoHealth:
    """A view with every backend healthy and idle (``iir explain`` without a running router)."""

    def available(self, name: str) -> tuple[bool, str]:
        return True, ""

    def load(self, name: str) -> float:
        return 0.0

    def ttft(self, name: str) -> float | None:
        return None


@dataclass(frozen=True, slots=True)
class SelectionRequest:
    """What selection looks at for one request."""

    model: str
    prompt_tokens: int = 0
    max_tokens: int = 0
    needs: frozenset[str] = frozenset()  # "tools", "images", "json"
    key_models: Callable[[str], bool] | None = None  # the client key's model allow-list
    affinity_key: str = ""  # session header value, or a prompt-prefix digest


@dataclass(slots=True)
class Scored:
    backend: Backend
    kept: bool = True
    reason: str = ""
    score: float | None = None


# -- filters ------------------------------------------------------------------------------------

def filter_healthy(b: Backend, req: SelectionRequest, health: HealthView) -> str:
    ok, why = health.available(b.name)
    return "" if ok else why


def filter_context_window(b: Backend, req: SelectionRequest, health: HealthView) -> str:
    if b.context_window is None:
        return ""
    need = req.prompt_tokens + req.max_tokens
    if need > b.context_window:
        return (f"context window {b.context_window} < {need} tokens "
                f"({req.prompt_tokens} prompt + {req.max_tokens} max_tokens)")
    return ""


def filter_capability(b: Backend, req: SelectionRequest, health: HealthView) -> str:
    missing = sorted(req.needs - b.capabilities)
    return f"lacks capability {', '.join(missing)}" if missing else ""


def filter_allowed_by_key(b: Backend, req: SelectionRequest, health: HealthView) -> str:
    """The key may use the requested name, or the model this backend would serve for it: the
    requested model if the backend declares it, else (an alias such as ``auto``) its first model."""
    if req.key_models is None or req.key_models(req.model):
        return ""
    served = req.model if b.serves(req.model) else (b.models[0] if b.models else "")
    if served and req.key_models(served):
        return ""
    return f"the client key may not use model {served!r}"


Filter = Callable[[Backend, SelectionRequest, HealthView], str]
FILTERS: Mapping[str, Filter] = MappingProxyType({
    "capability": filter_capability,
    "allowed-by-key": filter_allowed_by_key,
    "context-window": filter_context_window,
    "healthy": filter_healthy,
})
DEFAULT_FILTERS = ("capability", "allowed-by-key", "context-window", "healthy")


# -- strategies (scorer + picker) ---------------------------------------------------------------

def _h(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest(), "big")


def rendezvous_order(names: Sequence[str], key: str) -> list[str]:
    """Highest-random-weight (rendezvous) hashing: a stable order per key; removing one name
    only moves the keys that were on it."""
    return sorted(names, key=lambda n: _h(key, n), reverse=True)


def _price(b: Backend, model: str) -> float | None:
    p = b.prices.get(model) or b.prices.get(b.upstream_model(model))
    if p is None and len(b.prices) == 1:
        p = next(iter(b.prices.values()))
    return None if p is None else p[0] + p[1]


def score_priority(cands: list[Scored], req: SelectionRequest, health: HealthView, rng: random.Random) -> None:
    n = len(cands)
    for i, c in enumerate(cands):
        c.score = float(n - i)


def score_weighted(cands: list[Scored], req: SelectionRequest, health: HealthView, rng: random.Random) -> None:
    # Efraimidis-Spirakis: key u^(1/w); ordering by it is a weighted random permutation
    for c in cands:
        c.score = rng.random() ** (1.0 / c.backend.weight)


def score_least_loaded(cands: list[Scored], req: SelectionRequest, health: HealthView, rng: random.Random) -> None:
    for c in cands:
        c.score = -health.load(c.backend.name)


def score_lowest_latency(cands: list[Scored], req: SelectionRequest, health: HealthView, rng: random.Random) -> None:
    known = [t for c in cands if (t := health.ttft(c.backend.name)) is not None]
    unknown = min(known) if known else 0.0  # untried backends get a chance to be measured
    for c in cands:
        t = health.ttft(c.backend.name)
        c.score = -(unknown if t is None else t)


def score_cheapest(cands: list[Scored], req: SelectionRequest, health: HealthView, rng: random.Random) -> None:
    for c in cands:
        p = _price(c.backend, req.model)
        # self-hosted backends without a price cost nothing per token
        c.score = -(p if p is not None else (0.0 if c.backend.kind in ("agent", "vllm", "llm-d", "openai-compatible")
                                             else float("inf")))


def score_affinity(cands: list[Scored], req: SelectionRequest, health: HealthView, rng: random.Random) -> None:
    if not req.affinity_key:
        score_priority(cands, req, health, rng)
        return
    for c in cands:
        c.score = _h(req.affinity_key, c.backend.name) / 2.0**64


Strategy = Callable[[list[Scored], SelectionRequest, HealthView, random.Random], None]
STRATEGIES: Mapping[str, Strategy] = MappingProxyType({
    "priority": score_priority,
    "weighted": score_weighted,
    "least-loaded": score_least_loaded,
    "lowest-latency": score_lowest_latency,
    "cheapest": score_cheapest,
    "affinity": score_affinity,
})


@dataclass(slots=True)
class Selection:
    """Candidates with verdicts: kept ones first in pick order, then the dropped ones."""

    strategy: str
    candidates: list[Scored] = field(default_factory=list)

    @property
    def kept(self) -> list[Scored]:
        return [c for c in self.candidates if c.kept]


def select(backends: Sequence[Backend], req: SelectionRequest, strategy: str, health: HealthView | None = None,
           *, rng: random.Random | None = None, filters: Sequence[str] = DEFAULT_FILTERS,
           dropped: Mapping[str, str] | None = None) -> Selection:
    """Filter, score and order ``backends`` (given in the route's fallback order).

    ``dropped`` pre-drops backends with a reason (e.g. the router's own checks: no adapter).
    Ties keep the fallback order (the sort is stable)."""
    health = health or NoHealth()
    rng = rng or random.Random()
    score = STRATEGIES.get(strategy)
    if score is None:
        raise KeyError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    out = [Scored(b) for b in backends]
    for c in out:
        pre = (dropped or {}).get(c.backend.name)
        if pre:
            c.kept, c.reason = False, pre
            continue
        for name in filters:
            why = FILTERS[name](c.backend, req, health)
            if why:
                c.kept, c.reason = False, f"{name}: {why}"
                break
    kept = [c for c in out if c.kept]
    if kept:
        score(kept, req, health, rng)
    kept.sort(key=lambda c: c.score if c.score is not None else 0.0, reverse=True)
    for c in kept:
        c.reason = c.reason or strategy
    return Selection(strategy, kept + [c for c in out if not c.kept])


def explain_header(route: str, selection: Selection, limit: int = 6) -> str:
    """``x-iir-route`` value: ``route; strategy; name=score, name=score, name!reason``."""
    parts = []
    for c in selection.candidates[:limit]:
        if c.kept:
            parts.append(f"{c.backend.name}={c.score:.3g}" if c.score is not None else c.backend.name)
        else:
            # the filter's name ("healthy: ..."), or a pre-drop without its detail: "unconfigured (no API key)"
            short = c.reason.split(":", 1)[0]
            if short.count("(") > short.count(")"):
                short += ")"
            parts.append(f"{c.backend.name}!{short}")
    return f"{route}; {selection.strategy}; " + ", ".join(parts)
