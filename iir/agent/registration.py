"""The agent's side of registration: register, heartbeat, deregister.

On start-up the agent POSTs its URL, models, context window and capabilities to
``{router}/register`` with ``Authorization: Bearer <token>``, retrying with exponential backoff
and full jitter while the router is unreachable (or refuses). Then it heartbeats every
``interval`` seconds with its queue length and in-flight count; a heartbeat answered 404 (the
router forgot the agent, e.g. restarted with an in-memory store) triggers a new registration.
On graceful shutdown it deregisters. The token is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

__all__ = ["Backoff", "RegistrationClient"]

log = logging.getLogger("iir.agent.registration")


class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**attempt))``."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base, self.cap, self.attempt = base, cap, 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = self._rng.uniform(self.base / 2, min(self.cap, self.base * 2 ** self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


def _report_death(task: asyncio.Task[None]) -> None:
    """Registration must never end silently: an unexpected error is logged with its cause."""
    if not task.cancelled() and (e := task.exception()) is not None:
        log.error("registration stopped by an unexpected error: %s: %s", type(e).__name__, e)


class RegistrationClient:
    """Keeps one agent registered with one router for as long as it runs."""

    def __init__(self, router_url: str, token: str | None, registration: dict[str, Any],
                 load: Callable[[], Awaitable[dict[str, Any]]], *, interval: float = 10.0,
                 backoff: Backoff | None = None, timeout: float = 5.0) -> None:
        self.router_url = router_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.registration = registration
        self._load = load
        self.interval = self._configured_interval = interval
        self._backoff = backoff or Backoff()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.agent_id: str | None = None
        self.registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.create_task(self._run(), name="iir-agent-registration")
        self._task.add_done_callback(_report_death)

    async def stop(self, *, deregister: bool = True) -> None:
        """Stop heartbeating and deregister (best effort, bounded in time). ``deregister=False``
        just goes silent: the router marks the agent stale after its heartbeat timeout."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is None:
            return
        if self.agent_id is not None and deregister:
            try:
                async with self._session.post(f"{self.router_url}/deregister", json={"id": self.agent_id},
                                              headers=self._headers) as resp:
                    log.info("deregistered from %s (HTTP %s)", self.router_url, resp.status)
            except (aiohttp.ClientError, TimeoutError) as e:
                log.warning("could not deregister from %s: %s", self.router_url, e)
        await self._session.close()

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        assert self._session is not None
        async with self._session.post(f"{self.router_url}{path}", json=body, headers=self._headers) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = {}
            return resp.status, data if isinstance(data, dict) else {}

    async def _register(self) -> None:
        self._backoff.reset()
        while True:
            try:
                status, data = await self._post("/register", self.registration)
            except (aiohttp.ClientError, TimeoutError) as e:
                status, data, reason = 0, {}, f"router unreachable ({e.__class__.__name__})"
            else:
                error = data.get("error")
                message = error.get("message", "") if isinstance(error, dict) else str(error or "")
                reason = f"HTTP {status}: {message}" if status >= 300 else f"HTTP {status} without an agent id"
            if 200 <= status < 300 and data.get("id"):
                self.agent_id = str(data["id"])
                self._follow_router_timeout(data.get("heartbeat_timeout"))
                self.registered.set()
                log.info("registered with %s as %s", self.router_url, self.agent_id)
                return
            delay = self._backoff.next()
            log.warning("registration with %s failed: %s; retrying in %.1f s", self.router_url, reason, delay)
            await asyncio.sleep(delay)

    def _follow_router_timeout(self, timeout: object) -> None:
        """Heartbeat at least three times per the router's ``heartbeat_timeout`` (sent back on
        /register): a fixed 10 s interval made a healthy agent flap stale/live under a 5 s one."""
        self.interval = self._configured_interval
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0 \
                and self.interval > timeout / 3:
            self.interval = max(0.1, timeout / 3)
            log.info("heartbeating every %.1f s (the router's heartbeat timeout is %g s)", self.interval, timeout)

    async def _run(self) -> None:
        await self._register()
        while True:
            await asyncio.sleep(self.interval)
            body = {"id": self.agent_id, **(await self._load())}
            try:
                status, _ = await self._post("/heartbeat", body)
            except (aiohttp.ClientError, TimeoutError) as e:
                log.warning("heartbeat to %s failed: %s", self.router_url, e.__class__.__name__)
                continue
            if status == 404:  # the router does not know us (any more): register again
                self.registered.clear()
                log.info("router %s forgot this agent; registering again", self.router_url)
                await self._register()
            elif status >= 300:
                log.warning("heartbeat to %s answered HTTP %s", self.router_url, status)
