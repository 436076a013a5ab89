"""Shared state stores: one small async interface, an in-process and a Redis implementation.

Two kinds of state go through a store:

* plain values with a lifetime (cache entries): :meth:`StateStore.get` / :meth:`StateStore.set`;
* sliding-window counters (rate limits): :meth:`StateStore.acquire` checks and charges several
  counters all-or-nothing, :meth:`StateStore.settle` corrects a charge afterwards (reserved
  prompt-token estimate → real usage).

The sliding window is the classic two-bucket approximation: the count seen "now" is
``previous_bucket * (1 - elapsed_fraction) + current_bucket``. It never admits a burst of twice
the limit at a window boundary (a fixed window would) and needs two keys per counter.

:class:`RedisStore` makes every multi-step update one Lua script, so replicas sharing one Redis
agree; time comes from Redis (``TIME``) so replica clocks do not matter. Redis calls use short
socket timeouts and no retries; after a failure the store does not touch Redis again for
``retry_interval`` seconds and raises :class:`StoreUnavailable` at once, so an outage costs a
request at most one short timeout, never a hang. Outages are logged once per interval.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from iir.errors import IIRError
from iir.table import StateSettings

__all__ = [
    "AcquireResult",
    "Counter",
    "CounterState",
    "MemoryStore",
    "RedisStore",
    "StateStore",
    "StateUnavailableError",
    "StoreUnavailable",
    "open_store",
]

log = logging.getLogger("iir.policies.store")


class StoreUnavailable(Exception):
    """The store could not be reached; callers apply their fail mode."""


class StateUnavailableError(IIRError):
    """Shared state is down and the policy says fail closed."""

    status = 503
    type = "service_unavailable"
    code = "state_store_unavailable"


@dataclass(frozen=True, slots=True)
class Counter:
    """One sliding-window counter to charge: ``cost`` against ``limit`` per ``window`` seconds."""

    key: str
    limit: int
    window: float
    cost: int = 1


@dataclass(frozen=True, slots=True)
class CounterState:
    """A counter after an acquire: what the ``x-ratelimit-*`` headers report."""

    key: str
    limit: int
    remaining: int
    reset: float  # seconds until the used amount has fully drained (approximate)
    bucket: int  # bucket index charged, for settle()
    window: float


@dataclass(frozen=True, slots=True)
class AcquireResult:
    allowed: bool
    counters: tuple[CounterState, ...]
    retry_after: float = 0.0  # seconds, when not allowed
    denied_key: str = ""  # the counter that refused


def _window_ms(window: float) -> int:
    return max(1, int(window * 1000))


def _used(prev: float, curr: float, now_ms: int, win_ms: int) -> float:
    elapsed = now_ms % win_ms
    return prev * (1.0 - elapsed / win_ms) + curr


def _retry_after(prev: float, curr: float, cost: int, limit: int, now_ms: int, win_ms: int) -> float:
    """Seconds until ``cost`` fits, assuming no further traffic."""
    if cost > limit:
        return win_ms / 1000.0
    elapsed = now_ms % win_ms
    if curr + cost <= limit:
        # the previous bucket's weight must fall: prev * (1 - (e + t) / w) + curr + cost <= limit
        wait = win_ms * (1.0 - (limit - curr - cost) / prev) - elapsed if prev > 0 else 0.0
    else:
        # the current bucket becomes "previous" at the boundary, then decays
        wait = (win_ms - elapsed) + win_ms * (1.0 - (limit - cost) / curr)
    return max(0.001, wait / 1000.0)


def _reset(prev: float, curr: float, now_ms: int, win_ms: int) -> float:
    """Seconds until the counter is back to zero (both buckets drained)."""
    elapsed = now_ms % win_ms
    if curr > 0:
        return (2 * win_ms - elapsed) / 1000.0
    if prev > 0:
        return (win_ms - elapsed) / 1000.0
    return 0.0


class StateStore(ABC):
    """The interface every policy uses. Implementations must be safe for concurrent tasks."""

    kind: str = "abstract"

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value, or ``None`` when absent or expired. Raises :class:`StoreUnavailable`."""

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds. Raises :class:`StoreUnavailable`."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    @abstractmethod
    async def acquire(self, counters: Sequence[Counter]) -> AcquireResult:
        """Charge every counter if all of them have room, else none. Atomic."""

    @abstractmethod
    async def settle(self, key: str, window: float, bucket: int, delta: int) -> None:
        """Add ``delta`` (may be negative) to the bucket charged by an earlier acquire."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryStore(StateStore):
    """In-process store: the default for a single router. Expired entries are swept lazily."""

    kind = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time, max_entries: int = 100_000,
                 max_bytes: int = 256 * 1024 * 1024) -> None:
        self._clock = clock
        self._values: dict[str, tuple[bytes, float]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # key:bucket -> (count, expires)
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._ops = 0

    def _now(self) -> float:
        return float(self._clock())

    def _drop(self, key: str) -> None:
        item = self._values.pop(key, None)
        if item is not None:
            self._bytes -= len(item[0])

    def _sweep(self, now: float) -> None:
        self._ops += 1
        full = len(self._values) >= self._max_entries or self._bytes > self._max_bytes
        if self._ops % 1024 and not full:
            return
        for k in [k for k, (_, exp) in self._values.items() if exp <= now]:
            self._drop(k)
        for k in [k for k, (_, exp) in self._buckets.items() if exp <= now]:
            del self._buckets[k]
        while self._values and (len(self._values) >= self._max_entries or self._bytes > self._max_bytes):
            self._drop(next(iter(self._values)))  # oldest-inserted first

    async def get(self, key: str) -> bytes | None:
        item = self._values.get(key)
        if item is None:
            return None
        if item[1] <= self._now():
            self._drop(key)
            return None
        return item[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        now = self._now()
        self._drop(key)
        self._values[key] = (value, now + ttl)
        self._bytes += len(value)
        self._sweep(now)

    async def delete(self, key: str) -> None:
        self._drop(key)

    def _count(self, key: str, now: float) -> float:
        item = self._buckets.get(key)
        return item[0] if item and item[1] > now else 0.0

    async def acquire(self, counters: Sequence[Counter]) -> AcquireResult:
        now = self._now()
        self._sweep(now)
        now_ms = int(now * 1000)
        seen: list[tuple[Counter, int, float, float]] = []
        for c in counters:
            win = _window_ms(c.window)
            idx = now_ms // win
            prev = self._count(f"{c.key}:{idx - 1}", now)
            curr = self._count(f"{c.key}:{idx}", now)
            if c.cost > 0 and (c.cost > c.limit or _used(prev, curr, now_ms, win) + c.cost > c.limit):
                states = tuple(self._state(x, now_ms) for x in counters)
                return AcquireResult(False, states, _retry_after(prev, curr, c.cost, c.limit, now_ms, win), c.key)
            seen.append((c, idx, prev, curr))
        for c, idx, _, curr in seen:
            win = _window_ms(c.window)
            self._buckets[f"{c.key}:{idx}"] = (curr + c.cost, (idx + 2) * win / 1000.0)
        return AcquireResult(True, tuple(self._state(c, now_ms) for c in counters))

    def _state(self, c: Counter, now_ms: int) -> CounterState:
        win = _window_ms(c.window)
        idx = now_ms // win
        now = now_ms / 1000.0
        prev = self._count(f"{c.key}:{idx - 1}", now)
        curr = self._count(f"{c.key}:{idx}", now)
        used = _used(prev, curr, now_ms, win)
        return CounterState(c.key, c.limit, max(0, math.floor(c.limit - used)), _reset(prev, curr, now_ms, win),
                            idx, c.window)

    async def settle(self, key: str, window: float, bucket: int, delta: int) -> None:
        k = f"{key}:{bucket}"
        item = self._buckets.get(k)
        if item is not None and item[1] > self._now():
            self._buckets[k] = (max(0.0, item[0] + delta), item[1])


# KEYS: one base key per counter. ARGV: n, then (limit, window_ms, cost) per counter.
# Returns {allowed, retry_ms, denied_index, now_ms, then (prev, curr, idx) per counter after}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local prevs, currs, idxs = {}, {}, {}
local denied = 0
for i = 1, n do
  local limit = tonumber(ARGV[2 + (i - 1) * 3])
  local win = tonumber(ARGV[3 + (i - 1) * 3])
  local cost = tonumber(ARGV[4 + (i - 1) * 3])
  local idx = math.floor(now / win)
  local prev = tonumber(redis.call('GET', KEYS[i] .. ':' .. (idx - 1)) or '0')
  local curr = tonumber(redis.call('GET', KEYS[i] .. ':' .. idx) or '0')
  prevs[i], currs[i], idxs[i] = prev, curr, idx
  if denied == 0 and cost > 0 then
    local used = prev * (1 - (now % win) / win) + curr
    if cost > limit or used + cost > limit then denied = i end
  end
end
if denied == 0 then
  for i = 1, n do
    local win = tonumber(ARGV[3 + (i - 1) * 3])
    local cost = tonumber(ARGV[4 + (i - 1) * 3])
    if cost > 0 then
      local k = KEYS[i] .. ':' .. idxs[i]
      currs[i] = redis.call('INCRBY', k, cost)
      redis.call('PEXPIREAT', k, (idxs[i] + 2) * win)
    end
  end
end
local out = {denied, now}
for i = 1, n do
  table.insert(out, tostring(prevs[i])); table.insert(out, tostring(currs[i])); table.insert(out, idxs[i])
end
return out
"""

# KEYS[1] bucket key; ARGV[1] delta. Only corrects a bucket that still exists; never below zero.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') end
return 1
"""


class _OutageLog:
    """Logs a store outage at most once per interval, and the recovery once."""

    def __init__(self, name: str, interval: float) -> None:
        self.name, self.interval = name, interval
        self._last = -math.inf
        self.down = False
        self.suppressed = 0

    def failed(self, err: BaseException) -> None:
        now = time.monotonic()
        self.down = True
        if now - self._last >= self.interval:
            extra = f" ({self.suppressed} more failures since last report)" if self.suppressed else ""
            log.warning("state store %s unreachable: %s%s", self.name, type(err).__name__, extra)
            self._last, self.suppressed = now, 0
        else:
            self.suppressed += 1

    def recovered(self) -> None:
        if self.down:
            log.warning("state store %s reachable again", self.name)
            self.down, self._last, self.suppressed = False, -math.inf, 0


class RedisStore(StateStore):
    """Redis-backed store shared by router replicas (``state.store: redis``)."""

    kind = "redis"

    def __init__(self, url: str, *, prefix: str = "iir:", timeout: float = 1.0, max_connections: int = 32,
                 retry_interval: float = 1.0, log_interval: float = 30.0) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # a bounded pool that makes a burst wait briefly for a connection instead of opening
        # hundreds at once (or failing with "too many connections")
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout,
            socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0)
        self._redis = Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        self._prefix = prefix
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._skip_until = 0.0
        self._outage = _OutageLog("redis", log_interval)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._settle = self._redis.register_script(_SETTLE)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._skip_until

    async def _call(self, coro_fn, *args):  # type: ignore[no-untyped-def]
        from redis.exceptions import RedisError

        if time.monotonic() < self._skip_until:
            raise StoreUnavailable("redis marked down; retrying shortly")
        try:
            # the socket timeouts bound each I/O; this bounds the whole call (pool waits included)
            result = await asyncio.wait_for(coro_fn(*args), timeout=self._timeout * 3)
        except (RedisError, OSError, TimeoutError) as err:
            self._skip_until = time.monotonic() + self._retry_interval
            self._outage.failed(err)
            raise StoreUnavailable(str(err) or type(err).__name__) from err
        self._outage.recovered()
        return result

    async def get(self, key: str) -> bytes | None:
        value = await self._call(self._redis.get, self._prefix + key)
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call(self._redis.set, self._prefix + key, value, None, max(1, int(ttl * 1000)))

    async def delete(self, key: str) -> None:
        await self._call(self._redis.delete, self._prefix + key)

    async def acquire(self, counters: Sequence[Counter]) -> AcquireResult:
        args: list[int] = [len(counters)]
        for c in counters:
            args += [c.limit, _window_ms(c.window), c.cost]
        keys = [self._prefix + c.key for c in counters]
        raw = await self._call(self._acquire, keys, args)
        denied, now_ms = int(raw[0]), int(raw[1])
        states = []
        for i, c in enumerate(counters):
            prev, curr, idx = float(raw[2 + 3 * i]), float(raw[3 + 3 * i]), int(raw[4 + 3 * i])
            win = _window_ms(c.window)
            used = _used(prev, curr, now_ms, win)
            states.append(CounterState(c.key, c.limit, max(0, math.floor(c.limit - used)),
                                       _reset(prev, curr, now_ms, win), idx, c.window))
        if denied:
            c = counters[denied - 1]
            prev, curr = float(raw[2 + 3 * (denied - 1)]), float(raw[3 + 3 * (denied - 1)])
            retry = _retry_after(prev, curr, c.cost, c.limit, now_ms, _window_ms(c.window))
            return AcquireResult(False, tuple(states), retry, c.key)
        return AcquireResult(True, tuple(states))

    async def settle(self, key: str, window: float, bucket: int, delta: int) -> None:
        if delta:
            await self._call(self._settle, [f"{self._prefix}{key}:{bucket}"], [delta])

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(state: StateSettings, *, store: str | None = None) -> StateStore:
    """The store the spec asks for (``store`` overrides ``state.store``, e.g. the cache's)."""
    kind = store or state.store
    if kind == "redis":
        if not state.redis_url:
            raise ValueError("state.store is redis but no redis_url / REDIS_URL is set")
        return RedisStore(state.redis_url)
    return MemoryStore()
