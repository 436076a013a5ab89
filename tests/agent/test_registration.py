"""Registration with the real router: retry until it is up, heartbeats, stale and back, auth, SSRF guard,
and requests routed through the router to the agent via the official openai SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
import pytest
from click.testing import CliRunner

from iir.agent.demo_model import DEMO_ANSWER
from iir.cmd.agent import agents
from iir.compile.registry import Registry
from iir.server.agents_api import AGENTS
from tests.agent.conftest import AGENT_TOKEN, LocalAgent, LocalRouter, eventually

pytestmark = pytest.mark.timeout(600)  # the first test may build the tiny model (cached afterwards)
StartAgent = Callable[..., Awaitable[LocalAgent]]


def _sdk(router: LocalRouter) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60)


async def _ask(router: LocalRouter) -> str | None:
    async with _sdk(router) as client:
        chat = await client.chat.completions.create(
            model="tiny-demo", messages=[{"role": "user", "content": "Hi!"}], temperature=0)
    return chat.choices[0].message.content


async def _registered(agent: LocalAgent) -> bool:
    return agent.registration is not None and agent.registration.registered.is_set()


def _agents_cli(router: LocalRouter) -> list[dict[str, object]]:
    result = CliRunner().invoke(agents, ["list", "--spec", str(router.spec), "--json"],
                                env={"IIR_AGENT_TOKEN": AGENT_TOKEN})
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


async def test_agent_started_before_the_router_registers_once_it_is_up(
        start_agent: StartAgent, routers: list[LocalRouter], tmp_path: Path) -> None:
    router = LocalRouter(tmp_path)  # port reserved, nothing listening yet
    agent = await start_agent(router_url=router.url, token=AGENT_TOKEN, heartbeat_interval=0.3)
    await asyncio.sleep(1.0)  # a few failed attempts (backoff with jitter)
    assert not agent.registration.registered.is_set()  # type: ignore[union-attr]
    routers.append(await router.start())
    await eventually(lambda: _registered(agent), timeout=45)
    assert router.live_agents() == [f"agents/127.0.0.1:{agent.port}"]
    assert await _ask(router) == DEMO_ANSWER
    rows = await asyncio.to_thread(_agents_cli, router)
    assert [(r["id"], r["state"], r["models"]) for r in rows] == [(f"127.0.0.1:{agent.port}", "live", ["tiny-demo"])]


async def test_through_the_router_openai_sdk_chat_and_stream(
        start_agent: StartAgent, routers: list[LocalRouter], tmp_path: Path) -> None:
    router = await LocalRouter(tmp_path).start()
    routers.append(router)
    agent = await start_agent(router_url=router.url, token=AGENT_TOKEN, heartbeat_interval=0.3)
    await eventually(lambda: _registered(agent))
    async with _sdk(router) as client:
        chat = await client.chat.completions.create(
            model="tiny-demo", messages=[{"role": "user", "content": "Tell me a joke."}], temperature=0)
        assert chat.choices[0].message.content == DEMO_ANSWER
        assert chat.model == "tiny-demo" and chat.choices[0].finish_reason == "stop"
        assert chat.usage is not None and chat.usage.completion_tokens > 0
        stream = await client.chat.completions.create(
            model="tiny-demo", messages=[{"role": "user", "content": "Hi!"}], temperature=0, stream=True,
            stream_options={"include_usage": True})
        deltas, finish, usage = [], None, None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                deltas.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        assert "".join(deltas) == DEMO_ANSWER and len([d for d in deltas if d]) >= 3
        assert finish == "stop" and usage is not None and usage.completion_tokens > 0


STATIC_SPEC = """
version: 1
server: {{listen: "127.0.0.1:{port}"}}
state: {{registry: "{registry}"}}
backends:
  laptop: {{kind: agent, url: "{agent}", models: [tiny-demo]}}
routes:
  - name: all
    to: by-model
"""


async def test_agent_errors_reach_the_client_as_openai_errors(
        start_agent: StartAgent, routers: list[LocalRouter], tmp_path: Path) -> None:
    """A spec `kind: agent` backend that declares no context window: only the agent can refuse."""
    agent = await start_agent()
    router = LocalRouter(tmp_path)
    router.spec.write_text(STATIC_SPEC.format(port=router.port, registry=tmp_path / "static.db", agent=agent.url))
    routers.append(await router.start())
    async with _sdk(router) as client:
        assert (await client.chat.completions.create(
            model="tiny-demo", messages=[{"role": "user", "content": "Hi!"}], temperature=0,
        )).choices[0].message.content == DEMO_ANSWER
        for streaming in (False, True):  # streaming too: the error comes before the first byte
            with pytest.raises(openai.BadRequestError) as err:
                await client.chat.completions.create(model="tiny-demo", stream=streaming,
                                                     messages=[{"role": "user", "content": "hello world " * 400}])
            assert err.value.status_code == 400
            assert "context window" in str(err.value.message)


async def test_a_silent_agent_goes_stale_and_a_restarted_one_is_routed_again(
        start_agent: StartAgent, routers: list[LocalRouter], tmp_path: Path) -> None:
    router = await LocalRouter(tmp_path, timeout="2s").start()
    routers.append(router)
    agent = await start_agent(router_url=router.url, token=AGENT_TOKEN, heartbeat_interval=0.3)
    await eventually(lambda: _registered(agent))
    assert await _ask(router) == DEMO_ANSWER
    port = agent.port
    await agent.stop(crash=True)  # no deregistration: heartbeats just stop

    async def stale() -> bool:
        return router.live_agents() == []

    await eventually(stale, timeout=15)
    with pytest.raises(openai.APIStatusError) as err:  # skipped: no live agent for the model
        await _ask(router)
    assert err.value.status_code == 503
    rows = await asyncio.to_thread(_agents_cli, router)
    assert [(r["id"], r["state"]) for r in rows] == [(f"127.0.0.1:{port}", "stale")]

    again = await start_agent(port=port, router_url=router.url, token=AGENT_TOKEN, heartbeat_interval=0.3)
    await eventually(lambda: _registered(again))

    async def live() -> bool:
        return router.live_agents() == [f"agents/127.0.0.1:{port}"]

    await eventually(live)
    assert await _ask(router) == DEMO_ANSWER


async def test_graceful_stop_deregisters(start_agent: StartAgent, routers: list[LocalRouter], tmp_path: Path) -> None:
    router = await LocalRouter(tmp_path, timeout="30s").start()
    routers.append(router)
    agent = await start_agent(router_url=router.url, token=AGENT_TOKEN, heartbeat_interval=0.3)
    await eventually(lambda: _registered(agent))
    assert len(router.live_agents()) == 1
    await agent.stop()
    assert router.live_agents() == []
    with Registry(tmp_path / "router.db") as reg:
        assert reg.list_agents() == []


async def test_agent_heartbeats_within_the_routers_timeout(start_agent: StartAgent, routers: list[LocalRouter],
                                                           tmp_path: Path) -> None:
    """The router's heartbeat_timeout (1.5 s here) is shorter than the agent's configured
    interval (10 s): the agent follows the router (the timeout comes back on /register) and
    stays live instead of going stale between heartbeats."""
    router = await LocalRouter(tmp_path, timeout="1.5s").start()
    routers.append(router)
    agent = await start_agent(router_url=router.url, token=AGENT_TOKEN, heartbeat_interval=10)
    await eventually(lambda: _registered(agent))
    assert agent.registration is not None and agent.registration.interval == 0.5
    await asyncio.sleep(3)  # two timeouts: without heartbeats it would be stale by now
    assert len(router.live_agents()) == 1


async def _register(router: LocalRouter, body: dict[str, object], token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s, s.post(f"{router.url}/register", json=body, headers=headers) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("token", ["wrong-token", "", None])
async def test_wrong_token_is_401_and_changes_nothing(routers: list[LocalRouter], tmp_path: Path,
                                                      token: str | None) -> None:
    router = await LocalRouter(tmp_path).start()
    routers.append(router)
    status, body = await _register(router, {"url": "http://127.0.0.1:5999", "models": ["tiny-demo"]}, token)
    assert status == 401
    assert body["error"]["code"] == "invalid_agent_token"
    assert router.live_agents() == []
    with Registry(tmp_path / "router.db") as reg:
        assert reg.list_agents() == []
    for path in ("/heartbeat", "/deregister"):
        async with aiohttp.ClientSession() as s, s.post(f"{router.url}{path}", json={"id": "127.0.0.1:5999"},
                                                        headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401


@pytest.mark.parametrize("url", ["http://10.1.2.3:5000", "http://169.254.169.254/latest", "ftp://127.0.0.1:21",
                                 "http://[::ffff:10.0.0.1]:80", "http://a..b:80", "http://" + "a" * 70 + ".x:80"])
async def test_registration_url_outside_allowed_networks_is_403(routers: list[LocalRouter], tmp_path: Path,
                                                                url: str) -> None:
    router = await LocalRouter(tmp_path).start()
    routers.append(router)
    status, body = await _register(router, {"url": url, "models": ["tiny-demo"]}, AGENT_TOKEN)
    assert status == 403, body
    assert body["error"]["code"] == "agent_url_not_allowed"
    assert router.live_agents() == []
    with Registry(tmp_path / "router.db") as reg:
        assert reg.list_agents() == []
    status, body = await _register(router, {"url": "http://user:pw@127.0.0.1:1", "models": ["m"]}, AGENT_TOKEN)
    assert status == 400


@pytest.mark.redis
async def test_agent_registered_through_one_replica_is_routable_through_another(
        start_agent: StartAgent, routers: list[LocalRouter], tmp_path: Path, redis_url: str) -> None:
    a = await LocalRouter(tmp_path, store="redis", redis_url=redis_url, name="a").start()
    b = await LocalRouter(tmp_path, store="redis", redis_url=redis_url, name="b").start()
    routers.extend([a, b])
    agent = await start_agent(router_url=a.url, token=AGENT_TOKEN, heartbeat_interval=0.3)
    await eventually(lambda: _registered(agent))

    async def on_b() -> bool:
        return b.live_agents() == [f"agents/127.0.0.1:{agent.port}"]

    await eventually(on_b, timeout=1.0, every=0.05)  # the requirement: visible on another replica within 1 s
    assert await _ask(b) == DEMO_ANSWER
    rows = await asyncio.to_thread(_agents_cli, b)
    assert [r["state"] for r in rows] == ["live"]
    await agent.stop(crash=True)

    async def stale_on_both() -> bool:
        return a.live_agents() == [] and b.live_agents() == []

    await eventually(stale_on_both, timeout=15)


@pytest.mark.parametrize("same_registry", [True, False])
async def test_router_restart_agent_comes_back(start_agent: StartAgent, routers: list[LocalRouter],
                                               tmp_path: Path, same_registry: bool) -> None:
    """Same registry file: the router restores the agent and its heartbeats make it live again.
    Fresh registry: the heartbeat gets 404 and the agent registers again."""
    first = await LocalRouter(tmp_path, timeout="30s", name="r1").start()
    agent = await start_agent(router_url=first.url, token=AGENT_TOKEN, heartbeat_interval=0.3)
    await eventually(lambda: _registered(agent))
    await first.stop()
    second = LocalRouter(tmp_path, timeout="30s", port=first.port, name="r1" if same_registry else "r2")
    routers.append(await second.start())
    if same_registry:  # restored from the registry before any heartbeat arrived
        assert [e.id for e in second.app[AGENTS].snapshot().entries] == [f"127.0.0.1:{agent.port}"]  # type: ignore[index]

    async def live() -> bool:
        return second.live_agents() == [f"agents/127.0.0.1:{agent.port}"]

    await eventually(live)
    assert await _ask(second) == DEMO_ANSWER


async def test_least_loaded_follows_the_queue_lengths_agents_report_in_heartbeats(
        start_agent: StartAgent, routers: list[LocalRouter], tmp_path: Path) -> None:
    """Heartbeats carry each agent's queue length; a `least-loaded` route sends the next request
    to the agent reporting the shorter queue, and follows when the reports change."""
    router = await LocalRouter(tmp_path, timeout="600s", strategy="least-loaded").start()  # no own heartbeats
    routers.append(router)
    # heartbeats from the agents' own loops would report 0: far apart, the test sends its own
    a = await start_agent(router_url=router.url, token=AGENT_TOKEN, heartbeat_interval=3600)
    b = await start_agent(router_url=router.url, token=AGENT_TOKEN, heartbeat_interval=3600)
    await eventually(lambda: _registered(a))
    await eventually(lambda: _registered(b))
    ids = {agent: f"127.0.0.1:{agent.port}" for agent in (a, b)}

    async def report(queues: dict[LocalAgent, int]) -> None:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {AGENT_TOKEN}"}) as s:
            for agent, queue in queues.items():
                async with s.post(f"{router.url}/heartbeat", json={"id": ids[agent], "queue_length": queue}) as r:
                    assert r.status == 200, await r.text()

    async def served_by() -> str:
        async with aiohttp.ClientSession() as s, s.post(f"{router.url}/v1/chat/completions", json={
                "model": "tiny-demo", "messages": [{"role": "user", "content": "Hi!"}], "temperature": 0}) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["choices"][0]["message"]["content"] == DEMO_ANSWER
            return r.headers["x-iir-backend"]

    await report({a: 7, b: 0})
    assert [await served_by() for _ in range(3)] == [f"agents/{ids[b]}"] * 3
    await report({a: 0, b: 7})
    assert [await served_by() for _ in range(3)] == [f"agents/{ids[a]}"] * 3
