"""The agent directory: which agents registered, their models, and when they last sent a heartbeat.

Two implementations behind one small interface (:class:`AgentDirectory`):

* :class:`MemoryAgentDirectory`: in-process, for a single router process (``state.store: memory``).
* :class:`RedisAgentDirectory`: shared by every router replica (``state.store: redis``). One hash
  per agent (``{iir:agents}:a:<id>``) plus a sorted set of heartbeat times; register, heartbeat
  and deregister are Lua scripts (atomic), and timestamps come from the Redis clock (``TIME``),
  so replicas with skewed clocks agree on who is stale.

The request path never awaits the store: :meth:`AgentDirectory.snapshot` returns an immutable
:class:`AgentSnapshot`, rebuilt on every local change and refreshed from Redis by a background
task (every ``refresh_interval`` s, default 0.25), so an agent registered through one replica is
routable through another within a second. Stale rule: an agent whose last heartbeat is older
than ``heartbeat_timeout`` is not a candidate; it is again as soon as heartbeats resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
from redis.exceptions import RedisError

from iir.table import AGENT_CAPABILITIES, Backend

__all__ = [
    "AgentDirectory",
    "AgentEntry",
    "AgentSnapshot",
    "MemoryAgentDirectory",
    "RedisAgentDirectory",
    "agent_id_for",
]

log = logging.getLogger("iir.agents")
BACKEND_PREFIX = "agents/"


def agent_id_for(url: str) -> str:
    """A stable id for an agent URL (``host:port`` plus path): one entry per agent address."""
    parts = urlsplit(url)
    return (parts.netloc + parts.path.rstrip("/")).lower()


@dataclass(frozen=True, slots=True)
class AgentEntry:
    """One registered agent. Times are unix seconds on the store's clock."""

    id: str
    url: str
    models: tuple[str, ...]
    name: str = ""
    context_window: int | None = None
    capabilities: tuple[str, ...] = ()
    engine: str = ""
    device: str = ""
    max_queue: int | None = None
    registered_at: float = 0.0
    last_heartbeat: float = 0.0
    queue_length: int = 0
    in_flight: int = 0
    tokens_per_second: float = 0.0

    def static_json(self) -> bytes:
        """The fields fixed at registration (stored once, not rewritten by heartbeats)."""
        d = asdict(self)
        for k in ("registered_at", "last_heartbeat", "queue_length", "in_flight", "tokens_per_second"):
            d.pop(k)
        return orjson.dumps(d)

    @classmethod
    def from_static(cls, raw: bytes | str, **dynamic: Any) -> AgentEntry:
        d = orjson.loads(raw)
        d["models"], d["capabilities"] = tuple(d["models"]), tuple(d["capabilities"])
        return cls(**d, **dynamic)

    def age(self, now: float) -> float:
        return max(0.0, now - self.last_heartbeat)

    def backend(self) -> Backend:
        return Backend(name=BACKEND_PREFIX + self.id, kind="agent", protocol="agent", base_url=self.url.rstrip("/"),
                       models=self.models, context_window=self.context_window,
                       capabilities=frozenset(self.capabilities) & AGENT_CAPABILITIES, dynamic=True)


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """An immutable view for the hot path. ``clock_offset``: store clock minus local clock."""

    entries: tuple[AgentEntry, ...] = ()
    backends: tuple[Backend, ...] = ()
    clock_offset: float = 0.0
    taken_at: float = field(default_factory=time.time)
    #: backend name (``agents/<id>``) → its heartbeat ``queue_length``, for least-loaded
    queues: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, entries: Iterable[AgentEntry], clock_offset: float = 0.0) -> AgentSnapshot:
        ordered = tuple(sorted(entries, key=lambda e: e.id))
        return cls(ordered, tuple(e.backend() for e in ordered), clock_offset,
                   queues={BACKEND_PREFIX + e.id: e.queue_length for e in ordered})

    def queue_of(self, backend_name: str) -> int | None:
        """The queue length the agent behind ``backend_name`` reported in its last heartbeat;
        None if it is not a registered agent (the health board then uses its own reports)."""
        return self.queues.get(backend_name)

    def now(self) -> float:
        """The current time on the store's clock."""
        return time.time() + self.clock_offset

    def is_live(self, entry: AgentEntry, timeout: float, now: float | None = None) -> bool:
        return entry.age(self.now() if now is None else now) <= timeout

    def candidates(self, model: str | None, timeout: float) -> tuple[Backend, ...]:
        """Live agents (heartbeat within ``timeout``) serving ``model`` (any model if None)."""
        now = self.now()
        return tuple(b for e, b in zip(self.entries, self.backends, strict=True)
                     if now - e.last_heartbeat <= timeout and (model is None or model in e.models))

    def get(self, agent_id: str) -> AgentEntry | None:
        return next((e for e in self.entries if e.id == agent_id), None)


class AgentDirectory(Protocol):
    """Where registered agents live. Mutations are atomic; ``snapshot()`` is sync and cheap."""

    async def register(self, entry: AgentEntry) -> AgentEntry:
        """Add or replace an agent; sets ``registered_at`` (kept on re-registration) and the heartbeat."""
        ...

    async def heartbeat(self, agent_id: str, load: Mapping[str, float]) -> AgentEntry | None:
        """Record a heartbeat with ``queue_length``/``in_flight``/``tokens_per_second``; None if unknown."""
        ...

    async def deregister(self, agent_id: str) -> bool: ...

    async def entries(self) -> list[AgentEntry]:
        """Every agent, live or stale, read from the store (not the snapshot)."""
        ...

    def snapshot(self) -> AgentSnapshot: ...

    async def start(self) -> None:
        """Load the current state and start background refreshing (if any)."""
        ...

    async def close(self) -> None: ...


def _load_fields(load: Mapping[str, float]) -> dict[str, Any]:
    return {"queue_length": int(load.get("queue_length", 0) or 0), "in_flight": int(load.get("in_flight", 0) or 0),
            "tokens_per_second": float(load.get("tokens_per_second", 0.0) or 0.0)}


class MemoryAgentDirectory:
    """In-process directory for one router process."""

    def __init__(self) -> None:
        self._entries: dict[str, AgentEntry] = {}
        self._snapshot = AgentSnapshot()

    def _publish(self) -> None:
        self._snapshot = AgentSnapshot.of(self._entries.values())

    async def register(self, entry: AgentEntry) -> AgentEntry:
        now = time.time()
        old = self._entries.get(entry.id)
        registered = entry.registered_at or (old.registered_at if old else now)
        stored = replace(entry, registered_at=registered, last_heartbeat=entry.last_heartbeat or now)
        self._entries[entry.id] = stored
        self._publish()
        return stored

    async def heartbeat(self, agent_id: str, load: Mapping[str, float]) -> AgentEntry | None:
        old = self._entries.get(agent_id)
        if old is None:
            return None
        self._entries[agent_id] = new = replace(old, last_heartbeat=time.time(), **_load_fields(load))
        self._publish()
        return new

    async def deregister(self, agent_id: str) -> bool:
        found = self._entries.pop(agent_id, None) is not None
        self._publish()
        return found

    async def entries(self) -> list[AgentEntry]:
        return list(self._snapshot.entries)

    def snapshot(self) -> AgentSnapshot:
        return self._snapshot

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


# KEYS[1] agent hash, KEYS[2] heartbeat zset; ARGV: id, static json, expire seconds, registered_at (or "")
_REGISTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local reg = ARGV[4]
if reg == '' then reg = redis.call('HGET', KEYS[1], 'registered_at') or tostring(now) end
redis.call('HSET', KEYS[1], 'static', ARGV[2], 'registered_at', reg, 'last_heartbeat', tostring(now),
           'queue_length', '0', 'in_flight', '0', 'tokens_per_second', '0')
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return {reg, tostring(now)}
"""
# ARGV: id, expire seconds, queue_length, in_flight, tokens_per_second
_HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], 'last_heartbeat', tostring(now), 'queue_length', ARGV[3], 'in_flight', ARGV[4],
           'tokens_per_second', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return tostring(now)
"""
_DEREGISTER = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
"""
# KEYS[1] zset; ARGV[1] hash key prefix. Returns the Redis time, then per agent its fields.
_READ_ALL = """
local t = redis.call('TIME')
local out = {t[1], t[2]}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local h = redis.call('HMGET', ARGV[1] .. id, 'static', 'registered_at', 'last_heartbeat', 'queue_length',
                       'in_flight', 'tokens_per_second')
  if h[1] then
    table.insert(out, id)
    for i = 1, 6 do table.insert(out, h[i] or '0') end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""


class RedisAgentDirectory:
    """Directory shared through Redis by every router replica. ``redis`` is a ``redis.asyncio.Redis``
    client owned by the caller. Keys share one hash tag so the scripts also work on Redis Cluster."""

    def __init__(self, redis: Any, *, prefix: str = "{iir:agents}", refresh_interval: float = 0.25,
                 forget_after: float = 7 * 24 * 3600) -> None:
        self._redis = redis
        self._hash_prefix = f"{prefix}:a:"
        self._zset = f"{prefix}:hb"
        self._refresh_interval = refresh_interval
        self._forget_after = int(forget_after)
        self._snapshot = AgentSnapshot()
        self._task: asyncio.Task[None] | None = None
        self._scripts = {name: redis.register_script(src) for name, src in
                         (("register", _REGISTER), ("heartbeat", _HEARTBEAT), ("deregister", _DEREGISTER),
                          ("read_all", _READ_ALL))}

    def _keys(self, agent_id: str) -> list[str]:
        return [self._hash_prefix + agent_id, self._zset]

    async def register(self, entry: AgentEntry) -> AgentEntry:
        reg, now = await self._scripts["register"](
            keys=self._keys(entry.id),
            args=[entry.id, entry.static_json(), self._forget_after,
                  repr(entry.registered_at) if entry.registered_at else ""])
        stored = replace(entry, registered_at=float(reg), last_heartbeat=float(now), queue_length=0, in_flight=0)
        await self.refresh()
        return stored

    async def heartbeat(self, agent_id: str, load: Mapping[str, float]) -> AgentEntry | None:
        f = _load_fields(load)
        now = await self._scripts["heartbeat"](
            keys=self._keys(agent_id),
            args=[agent_id, self._forget_after, f["queue_length"], f["in_flight"], f["tokens_per_second"]])
        if now is None:
            return None
        await self.refresh()
        return self._snapshot.get(agent_id)

    async def deregister(self, agent_id: str) -> bool:
        removed = await self._scripts["deregister"](keys=self._keys(agent_id), args=[agent_id])
        await self.refresh()
        return bool(removed)

    async def _read(self) -> tuple[list[AgentEntry], float]:
        raw = await self._scripts["read_all"](keys=[self._zset], args=[self._hash_prefix])
        redis_now = float(raw[0]) + float(raw[1]) / 1e6
        entries = []
        for i in range(2, len(raw), 7):
            _id, static, reg, hb, queue, inflight, tps = raw[i:i + 7]
            entries.append(AgentEntry.from_static(static, registered_at=float(reg), last_heartbeat=float(hb),
                                                  queue_length=int(queue), in_flight=int(inflight),
                                                  tokens_per_second=float(tps)))
        return entries, redis_now - time.time()

    async def entries(self) -> list[AgentEntry]:
        return (await self._read())[0]

    async def refresh(self) -> None:
        entries, offset = await self._read()
        self._snapshot = AgentSnapshot.of(entries, offset)

    def snapshot(self) -> AgentSnapshot:
        return self._snapshot

    async def start(self) -> None:
        try:
            await self.refresh()
        except (RedisError, OSError) as e:  # keep going: the refresh loop retries
            log.warning("agent directory: Redis not reachable at start-up: %s", e)
        self._task = asyncio.create_task(self._refresh_loop(), name="iir-agents-refresh")

    async def _refresh_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self.refresh()
            except (RedisError, OSError) as e:
                if not failing:  # log the transition, not every tick
                    log.warning("agent directory: Redis refresh failed, keeping the last snapshot: %s", e)
                failing = True
                continue
            if failing:
                log.info("agent directory: Redis reachable again")
            failing = False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
