"""Fixtures for the agent tests: the tiny model (built once, cached by recipe hash), one loaded
engine per session, in-process agents and routers on loopback ports.

The tiny model is built into ``$IIR_CACHE_DIR/tiny-model/<recipe hash>`` (default
``~/.cache/iir``): the first run trains it (seconds to a minute), later runs reuse it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from iir.agent.config import AgentConfig
from iir.agent.demo_model import ensure_tiny_model
from iir.agent.engine_transformers import TransformersEngine
from iir.agent.registration import RegistrationClient
from iir.agent.runner import registration_body
from iir.agent.service import STATE, create_app, health_report
from iir.compile.build import build_table
from iir.server.app import create_app as create_router_app
from iir.server.state import TableState

AGENT_TOKEN = "agent-test-token"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> Iterator[TransformersEngine]:
    engine = TransformersEngine(str(tiny_model_dir), "tiny-demo", device="cpu")
    engine._load()  # synchronous load once for the whole session (no event loop here)
    yield engine
    engine._executor.shutdown(wait=True)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


class LocalAgent:
    """An agent in this process: the real service and registration client on a loopback port."""

    def __init__(self, engine: TransformersEngine, config: AgentConfig) -> None:
        self.engine, self.config = engine, config
        self.url = ""
        self.registration: RegistrationClient | None = None
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None

    async def start(self, port: int = 0) -> LocalAgent:
        self.app = create_app(self.engine, self.config)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        if self.config.router_url:
            state = self.app[STATE]

            async def load() -> dict[str, Any]:
                report = await health_report(self.engine, state)
                return {k: report[k] for k in ("queue_length", "in_flight", "tokens_per_second")}

            self.registration = RegistrationClient(
                self.config.router_url, self.config.token.get_secret_value() if self.config.token else None,
                registration_body(self.config, self.engine, self.url), load,
                interval=self.config.heartbeat_interval)
            await self.registration.start()
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def stop(self, *, crash: bool = False) -> None:
        """Graceful stop deregisters; ``crash`` just goes silent (no deregistration)."""
        if self.registration is not None:
            await self.registration.stop(deregister=not crash)
            self.registration = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def start_agent(tiny_engine: TransformersEngine) -> AsyncIterator[Callable[..., Awaitable[LocalAgent]]]:
    """``await start_agent(**config)``: a started LocalAgent; all stopped at teardown."""
    agents: list[LocalAgent] = []

    async def start(port: int = 0, **config: Any) -> LocalAgent:
        agent = await LocalAgent(tiny_engine, AgentConfig(model="tiny-demo", **config)).start(port)
        agents.append(agent)
        return agent

    yield start
    for a in agents:
        await a.stop()


@pytest.fixture
async def agent_url(start_agent: Callable[..., Awaitable[LocalAgent]]) -> str:
    return (await start_agent()).url


ROUTER_SPEC = """
version: 1
server: {{listen: "127.0.0.1:{port}"}}
state: {{store: {store}, redis_url: "{redis_url}", registry: "{registry}"}}
agents:
  token: "{token}"
  heartbeat_timeout: {timeout}
  allow_networks: [127.0.0.0/8]
backends: {{}}
routes:
  - name: local
    match: {{model: tiny-demo}}
    to: agents
    strategy: {strategy}
"""


class LocalRouter:
    """The real router app (default pipeline) in this process, on a loopback port."""

    def __init__(self, tmp_path: Path, *, timeout: str = "2s", store: str = "memory", redis_url: str = "",
                 port: int = 0, name: str = "router", strategy: str = "priority") -> None:
        from tests.conftest import free_port

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spec = tmp_path / f"{name}.yaml"
        self.spec.write_text(ROUTER_SPEC.format(port=self.port, store=store, redis_url=redis_url,
                                                registry=tmp_path / f"{name}.db", token=AGENT_TOKEN,
                                                timeout=timeout, strategy=strategy))
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None

    async def start(self) -> LocalRouter:
        built = build_table(self.spec, {})
        self.app = create_router_app(TableState(path=self.spec, built=built, env=lambda: {}), watch=False)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def live_agents(self) -> list[str]:
        from iir.server.agents_api import AGENTS

        assert self.app is not None
        timeout = 2.0 if "2s" in self.spec.read_text() else 30.0
        return [b.name for b in self.app[AGENTS].snapshot().candidates(None, timeout)]


@pytest.fixture
async def routers(tmp_path: Path) -> AsyncIterator[list[LocalRouter]]:
    """A list to which tests append started LocalRouters; all stopped at teardown."""
    started: list[LocalRouter] = []
    yield started
    for r in started:
        await r.stop()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, every: float = 0.1) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds (a bound, not a speed test)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            if await check():
                return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(every)
