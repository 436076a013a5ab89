"""Rate limits: named policies from the spec, counted in a :class:`~iir.policies.store.StateStore`.

A policy (``policies.limits.<name>``) has a scope (``per``: key, model, backend, route, global),
a request rate and/or a token rate. Which policies apply to a request:

* the policies named by the client key (``auth.keys[].limits``),
* the policies named by the matched route (``routes[].limits``),
* every policy that nothing names (a default limit for all traffic).

Requests cost 1; tokens cost the estimated prompt tokens up front (reserved), and are settled
with the real ``prompt + completion`` usage once the response is done. All counters of one
admission are charged atomically (all or none). A refusal raises
:class:`~iir.errors.RateLimitedError` carrying ``Retry-After`` and OpenAI's ``x-ratelimit-*``
headers. When the store is down, the policy's ``fail`` mode decides: ``open`` lets the request
through uncounted, ``closed`` answers 503.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from iir.errors import RateLimitedError
from iir.policies.store import (
    AcquireResult,
    Counter,
    CounterState,
    StateStore,
    StateUnavailableError,
    StoreUnavailable,
)
from iir.table import LimitSettings, RoutingTable

__all__ = ["PRE_ROUTE_SCOPES", "RateLimiter", "Reservation", "format_reset", "limits_for"]

log = logging.getLogger("iir.policies.ratelimit")

PRE_ROUTE_SCOPES = frozenset({"key", "model", "global"})


def format_reset(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def limits_for(table: RoutingTable, key_limits: Iterable[str], route_limits: Iterable[str]) -> list[LimitSettings]:
    """Policies applying to a request: named by its key or route, plus every unreferenced one."""
    names = dict.fromkeys([*key_limits, *route_limits])
    referenced = {n for k in table.auth.keys_by_sha256.values() for n in k.limits}
    referenced.update(n for r in table.routes for n in r.limits)
    names.update(dict.fromkeys(n for n in table.limits if n not in referenced))
    return [table.limits[n] for n in names if n in table.limits]


@dataclass(slots=True)
class Reservation:
    """What an admission charged, to settle later. ``fail_open`` when the store was down."""

    token_counters: list[CounterState] = field(default_factory=list)
    reserved_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    fail_open: bool = False
    settled: bool = False

    def merge(self, other: Reservation) -> None:
        self.token_counters += other.token_counters
        self.fail_open = self.fail_open or other.fail_open
        self.headers.update(other.headers)


def _headers(result: AcquireResult, kinds: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for suffix in ("requests", "tokens"):
        states = [s for s, k in zip(result.counters, kinds, strict=True) if k == suffix]
        if not states:
            continue
        tight = min(states, key=lambda s: (s.remaining / s.limit if s.limit else 0, s.remaining))
        out[f"x-ratelimit-limit-{suffix}"] = str(tight.limit)
        out[f"x-ratelimit-remaining-{suffix}"] = str(tight.remaining)
        out[f"x-ratelimit-reset-{suffix}"] = format_reset(max(s.reset for s in states))
    return out


class RateLimiter:
    """Admits requests against limit policies. One per app; holds no per-request state."""

    def __init__(self, store: StateStore, *, prefix: str = "rl") -> None:
        self.store = store
        self.prefix = prefix

    def _counters(self, limits: Sequence[LimitSettings], ids: Mapping[str, str],
                  tokens: int) -> tuple[list[Counter], list[str], list[LimitSettings]]:
        counters: list[Counter] = []
        kinds: list[str] = []
        owners: list[LimitSettings] = []
        for lim in limits:
            ident = "*" if lim.per == "global" else ids.get(lim.per)
            if ident is None:
                continue  # the scope is not known at this stage (e.g. backend before selection)
            base = f"{self.prefix}:{lim.name}:{lim.per}:{ident}"
            if lim.requests:
                counters.append(Counter(base + ":req", lim.requests[0], lim.requests[1], 1))
                kinds.append("requests")
                owners.append(lim)
            if lim.tokens:
                counters.append(Counter(base + ":tok", lim.tokens[0], lim.tokens[1], max(0, tokens)))
                kinds.append("tokens")
                owners.append(lim)
        return counters, kinds, owners

    async def admit(self, limits: Sequence[LimitSettings], ids: Mapping[str, str], tokens: int) -> Reservation:
        """Charge one request and ``tokens`` reserved tokens against ``limits``.

        ``ids`` maps a scope (``key``, ``model``, ``route``, ``backend``) to its value for this
        request. Raises :class:`RateLimitedError` (429) or :class:`StateUnavailableError` (503)."""
        counters, kinds, owners = self._counters(limits, ids, tokens)
        if not counters:
            return Reservation()
        try:
            result = await self.store.acquire(counters)
        except StoreUnavailable as err:
            closed = [lim.name for lim in owners if lim.fail == "closed"]
            if closed:
                raise StateUnavailableError(
                    f"rate limiting is unavailable and policy {closed[0]!r} fails closed; retry shortly",
                    headers={"Retry-After": "1"}) from err
            return Reservation(fail_open=True)
        headers = _headers(result, kinds)
        if not result.allowed:
            i = next(i for i, c in enumerate(counters) if c.key == result.denied_key)
            lim, kind, c = owners[i], kinds[i], counters[i]
            retry = max(1, math.ceil(result.retry_after))
            headers["Retry-After"] = str(retry)
            if kind == "tokens" and c.cost > c.limit:
                msg = (f"Request too large for rate limit {lim.name!r}: {c.cost} tokens requested, "
                       f"limit {c.limit} per {format_reset(c.window)}.")
            else:
                msg = (f"Rate limit {lim.name!r} reached for {kind} (limit {c.limit} per {format_reset(c.window)}, "
                       f"per {lim.per}). Retry after {retry}s.")
            raise RateLimitedError(msg, headers=headers, code="rate_limit_exceeded")
        token_states = [s for s, k in zip(result.counters, kinds, strict=True) if k == "tokens"]
        return Reservation(token_counters=token_states, reserved_tokens=max(0, tokens), headers=headers)

    async def settle(self, reservation: Reservation, used_tokens: int | None) -> None:
        """Replace the reserved token estimate with the real usage (``None``: keep the estimate)."""
        if reservation.settled or reservation.fail_open or used_tokens is None:
            reservation.settled = True
            return
        reservation.settled = True
        delta = int(used_tokens) - reservation.reserved_tokens
        if not delta:
            return
        for state in reservation.token_counters:
            try:
                await self.store.settle(state.key, state.window, state.bucket, delta)
            except StoreUnavailable:
                return  # already logged by the store; the window expires on its own
