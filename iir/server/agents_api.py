"""Router side of agent registration: ``POST /register``, ``/heartbeat``, ``/deregister``.

* Every call needs ``Authorization: Bearer <agents.token>``: a wrong or missing token gets 401
  and changes nothing; without ``agents.token`` in the spec registration is closed (403).
* The URL an agent registers must use a scheme in ``agents.allow_schemes`` and resolve only to
  addresses inside ``agents.allow_networks`` (403 otherwise): registration cannot be used to make
  the router send requests anywhere else (no server-side request forgery).
* Agents live in the agent directory (memory or Redis, per ``state.store``; see
  :mod:`iir.policies.agents`) and are mirrored to the SQLite registry's ``agents`` table, from
  which a single-process router restores them (stale until they heartbeat again).

``setup(app, get_table)`` adds the routes and a cleanup context that opens the directory and
stores it at ``app[AGENTS]``; the select stage reads ``app[AGENTS].snapshot().candidates(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from iir.compile.registry import Registry, RegistryError
from iir.errors import (
    AuthenticationError,
    BadRequestError,
    IIRError,
    ModelNotFoundError,
    PermissionDeniedError,
)
from iir.observability.logging import log_agent_registered, log_heartbeat_expired
from iir.observability.metrics import METRICS_KEY
from iir.policies.agents import (
    AgentDirectory,
    AgentEntry,
    MemoryAgentDirectory,
    RedisAgentDirectory,
    agent_id_for,
)
from iir.table import RoutingTable

__all__ = ["AGENTS", "check_agent_url", "setup"]

log = logging.getLogger("iir.agents")
AGENTS = web.AppKey("iir.agents", AgentDirectory)  # type: ignore[type-abstract]
_GET_TABLE: web.AppKey[Callable[[], RoutingTable]] = web.AppKey("iir.agents.get_table")
_MIRROR = web.AppKey("iir.agents.mirror", object)
_MAX_BODY = 64 * 1024
_MONITOR_INTERVAL = 1.0


class _Registration(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(..., min_length=1, max_length=2048)
    models: list[str] = Field(..., min_length=1, max_length=64)
    name: str = Field("", max_length=128)
    context_window: int | None = Field(None, ge=1)
    capabilities: list[Literal["tools", "images", "json"]] = []
    engine: str = Field("", max_length=32)
    device: str = Field("", max_length=32)
    max_queue: int | None = Field(None, ge=1)


class _Heartbeat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(..., min_length=1, max_length=2048)
    queue_length: int = Field(0, ge=0)
    in_flight: int = Field(0, ge=0)
    tokens_per_second: float = Field(0.0, ge=0)


class _Deregistration(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(..., min_length=1, max_length=2048)


class _RegistryMirror:
    """The SQLite ``agents`` table, written on one dedicated thread (sqlite is synchronous)."""

    def __init__(self, path: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iir-agents-registry")
        self._path = path
        self._registry: Registry | None = None

    async def call(self, fn: Callable[[Registry], Any]) -> Any:
        def run() -> Any:
            if self._registry is None:
                self._registry = Registry(self._path)
            return fn(self._registry)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, run)
        except (RegistryError, OSError) as e:  # the directory stays authoritative; the mirror is best effort
            log.warning("agent registry %s not updated: %s", self._path, e)
            return None

    async def close(self) -> None:
        if self._registry is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._registry.close)
        self._pool.shutdown(wait=False)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(e: IIRError) -> web.Response:
    return web.Response(body=orjson.dumps(e.to_openai()), status=e.status, content_type="application/json",
                        headers=e.headers or None)


def _authorise(request: web.Request, table: RoutingTable) -> None:
    expected = table.agents.token_sha256
    if expected is None:
        raise PermissionDeniedError("agent registration is closed: the spec sets no agents.token",
                                    code="registration_closed")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    presented = hashlib.sha256(token.strip().encode()).digest()
    if scheme.lower() != "bearer" or not token.strip() or not hmac.compare_digest(presented, expected):
        raise AuthenticationError("invalid or missing agent registration token", code="invalid_agent_token")


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    raw = await request.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        raise BadRequestError(f"registration bodies are limited to {_MAX_BODY} bytes")
    try:
        return model.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as e:
        raise BadRequestError(f"the request body is not valid JSON: {e}") from None
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BadRequestError(f"{loc}: {first['msg']}", param=loc or None) from None


async def check_agent_url(url: str, table: RoutingTable) -> str:
    """The normalised URL if it is allowed; PermissionDeniedError (403) otherwise.

    Hostnames are resolved and every address must lie inside an allowed network."""
    policy = table.agents
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise BadRequestError(f"url: not a valid URL: {e}", param="url") from None
    if parts.scheme not in policy.allow_schemes:
        raise PermissionDeniedError(f"agent URL scheme {parts.scheme!r} is not allowed (agents.allow_schemes: "
                                    f"{', '.join(policy.allow_schemes)})", code="agent_url_not_allowed")
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
        raise BadRequestError("url: must be scheme://host[:port][/path], without credentials, query or fragment",
                              param="url")
    try:
        addresses = [ipaddress.ip_address(parts.hostname)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port or 80,
                                                                 type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):  # UnicodeError: not an encodable host name (empty or 64+ char label)
            raise PermissionDeniedError(f"agent host {parts.hostname!r} does not resolve",
                                        code="agent_url_not_allowed") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    networks = [ipaddress.ip_network(n, strict=False) for n in policy.allow_networks]
    for address in addresses:
        if not any(address.version == n.version and address in n for n in networks):
            raise PermissionDeniedError(
                f"agent URL {url} resolves to {address}, outside agents.allow_networks "
                f"({', '.join(policy.allow_networks)})", code="agent_url_not_allowed")
    return url.rstrip("/")


class _DirectoryUnavailable(IIRError):
    status = 503
    type = "service_unavailable"
    code = "agent_directory_unavailable"


def _unavailable(e: Exception) -> web.Response:
    log.warning("agent directory unavailable: %s", e)
    return _error(_DirectoryUnavailable("the agent directory (Redis) is unavailable; retry later",
                                        headers={"Retry-After": "2"}))


def _metrics(app: web.Application) -> Any:
    return app.get(METRICS_KEY)


async def register(request: web.Request) -> web.Response:
    table = request.app[_GET_TABLE]()
    try:
        _authorise(request, table)
        body: _Registration = await _body(request, _Registration)
        url = await check_agent_url(body.url, table)
    except IIRError as e:
        return _error(e)
    directory = request.app[AGENTS]
    agent_id = agent_id_for(url)
    renewed = directory.snapshot().get(agent_id) is not None
    try:
        entry = await directory.register(AgentEntry(
            id=agent_id, url=url, models=tuple(body.models), name=body.name or agent_id,
            context_window=body.context_window or table.agents.context_window,
            capabilities=tuple(body.capabilities), engine=body.engine, device=body.device,
            max_queue=body.max_queue))
    except (RedisError, OSError) as e:
        return _unavailable(e)
    await request.app[_MIRROR].call(lambda reg: reg.upsert_agent(  # type: ignore[attr-defined]
        entry.id, entry.url, entry.models, context_window=entry.context_window, capabilities=entry.capabilities,
        state="ready", load={"name": entry.name, "engine": entry.engine, "device": entry.device},
        now=entry.last_heartbeat))
    log_agent_registered(log, agent=entry.id, url=entry.url, models=entry.models, renewed=renewed)
    if (m := _metrics(request.app)) is not None:
        m.agent_event("registered")
    return _json({"id": entry.id, "name": entry.name, "backend": entry.backend().name,
                  "heartbeat_timeout": table.agents.heartbeat_timeout, "state": "live"})


async def heartbeat(request: web.Request) -> web.Response:
    table = request.app[_GET_TABLE]()
    try:
        _authorise(request, table)
        body: _Heartbeat = await _body(request, _Heartbeat)
    except IIRError as e:
        return _error(e)
    load = {"queue_length": body.queue_length, "in_flight": body.in_flight,
            "tokens_per_second": body.tokens_per_second}
    try:
        entry = await request.app[AGENTS].heartbeat(body.id, load)
    except (RedisError, OSError) as e:
        return _unavailable(e)
    if entry is None:
        return _error(ModelNotFoundError(f"unknown agent {body.id!r}: register again", code="unknown_agent"))
    await request.app[_MIRROR].call(lambda reg: reg.heartbeat(body.id, load=load, state="ready",  # type: ignore[attr-defined]
                                                               now=entry.last_heartbeat))
    if (m := _metrics(request.app)) is not None:
        m.set_agent_queue(entry.id, body.queue_length)
    return _json({"id": entry.id, "state": "live"})


async def deregister(request: web.Request) -> web.Response:
    table = request.app[_GET_TABLE]()
    try:
        _authorise(request, table)
        body: _Deregistration = await _body(request, _Deregistration)
    except IIRError as e:
        return _error(e)
    try:
        found = await request.app[AGENTS].deregister(body.id)
    except (RedisError, OSError) as e:
        return _unavailable(e)
    await request.app[_MIRROR].call(lambda reg: reg.remove_agent(body.id))  # type: ignore[attr-defined]
    log.info("agent deregistered", extra={"agent": body.id, "known": found})
    return _json({"id": body.id, "deregistered": found})


async def _monitor(app: web.Application) -> None:
    """Log and count live ↔ stale transitions; mirror them to the registry's ``state`` column."""
    live: dict[str, bool] = {}
    while True:
        await asyncio.sleep(_MONITOR_INTERVAL)
        timeout = app[_GET_TABLE]().agents.heartbeat_timeout
        snap = app[AGENTS].snapshot()
        now = snap.now()
        current = {e.id: now - e.last_heartbeat <= timeout for e in snap.entries}
        for entry in snap.entries:
            was, is_live = live.get(entry.id), current[entry.id]
            if was is True and not is_live:
                log_heartbeat_expired(log, agent=entry.id, last_seen_seconds_ago=entry.age(now), timeout=timeout)
                if (m := _metrics(app)) is not None:
                    m.agent_event("heartbeat_expired")
                await app[_MIRROR].call(lambda reg, i=entry.id: reg.set_agent_state(i, "stale"))  # type: ignore[attr-defined]
            elif was is False and is_live:
                log.info("agent live again", extra={"agent": entry.id})
        live = current
        if (m := _metrics(app)) is not None:
            n_live = sum(current.values())
            m.set_agents(n_live, len(current) - n_live)


async def _open_directory(table: RoutingTable) -> tuple[AgentDirectory, Any]:
    if table.state.store == "redis" and table.state.redis_url:
        from redis.asyncio import Redis

        client = Redis.from_url(table.state.redis_url)
        return RedisAgentDirectory(client), client
    return MemoryAgentDirectory(), None


async def _restore(directory: AgentDirectory, mirror: _RegistryMirror) -> None:
    """Reload agents a previous run of this (single-process) router knew; they stay stale until they heartbeat."""
    records = await mirror.call(lambda reg: reg.list_agents()) or []  # type: ignore[attr-defined]
    for r in records:
        if r.state == "gone":
            continue
        await directory.register(AgentEntry(
            id=r.id, url=r.url, models=r.models, name=str(r.load.get("name", r.id)), context_window=r.context_window,
            capabilities=r.capabilities, engine=str(r.load.get("engine", "")), device=str(r.load.get("device", "")),
            registered_at=r.registered_at, last_heartbeat=r.last_heartbeat))


async def _directory_ctx(app: web.Application) -> AsyncIterator[None]:
    table = app[_GET_TABLE]()
    directory, client = await _open_directory(table)
    mirror = _RegistryMirror(table.state.registry)
    app[_MIRROR] = mirror
    await directory.start()  # a Redis directory tolerates Redis being down; its refresh loop retries
    if isinstance(directory, MemoryAgentDirectory):
        await _restore(directory, mirror)
    app[AGENTS] = directory
    monitor = asyncio.create_task(_monitor(app), name="iir-agents-monitor")
    try:
        yield
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        await directory.close()
        if client is not None:
            await client.aclose()
        await mirror.close()


def setup(app: web.Application, get_table: Callable[[], RoutingTable]) -> None:
    """Add the registration routes and the directory's lifecycle to a router app."""
    app[_GET_TABLE] = get_table
    app.router.add_post("/register", register)
    app.router.add_post("/heartbeat", heartbeat)
    app.router.add_post("/deregister", deregister)
    app.cleanup_ctx.append(_directory_ctx)
