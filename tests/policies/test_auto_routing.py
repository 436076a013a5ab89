"""``auto`` routing through the real router with the shipped examples/llmd-cluster.yaml: a short
prompt goes to a registered agent (the least loaded one, by the queue lengths of their
heartbeats; the cluster when every agent has a queue), a 3,000-token prompt or a tools request
to the llm-d cluster (a loopback server)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from iir.agent.demo_model import DEMO_ANSWER
from iir.policies.tokens import TokenCounter

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llmd-cluster.yaml"
TOKEN = "auto-agent-token-1234"
KEY = "sk-auto-apps-0123456789"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def loopback_spec() -> str:
    """The example as shipped, but letting agents register over http from loopback (the test's
    agents are on 127.0.0.1; the example only admits https from 10.0.0.0/8)."""
    text = EXAMPLE.read_text()
    for old, new in (("allow_networks: [10.0.0.0/8]", "allow_networks: [127.0.0.0/8]"),
                     ("allow_schemes: [https]", "allow_schemes: [http]")):
        assert old in text, f"examples/llmd-cluster.yaml changed: {old!r} not found"
        text = text.replace(old, new)
    return text


async def _chat(s: aiohttp.ClientSession, base: str, body: dict) -> tuple[int, dict, dict]:
    async with s.post(f"{base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=aiohttp.ClientTimeout(total=60)) as r:
        return r.status, dict(r.headers), await r.json()


async def _agent_call(s: aiohttp.ClientSession, base: str, path: str, body: dict) -> dict:
    async with s.post(f"{base}{path}", json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_auto_short_to_least_loaded_agent_long_or_tools_to_cluster(
        upstream, start_router, start_agent, redis_url) -> None:
    env = {"REDIS_URL": redis_url, "LLMD_ENDPOINT": f"{upstream.url}/v1", "IIR_AGENT_TOKEN": TOKEN,
           "IIR_KEY_APPS": KEY}
    base, _ = await start_router(loopback_spec(), env)
    busy, idle = await start_agent(), await start_agent()  # real agents, registered by the test below
    counter = TokenCounter()
    short = {"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}]}
    assert 15 <= counter.count_request(short, "chat", "auto") <= 25  # a ~20-token prompt
    async with aiohttp.ClientSession() as s:
        ids = {}
        for agent in (busy, idle):
            reply = await _agent_call(s, base, "/register", {"url": agent.url, "models": ["tiny-demo"]})
            ids[agent.url] = reply["id"]
        await _agent_call(s, base, "/heartbeat", {"id": ids[busy.url], "queue_length": 6})
        await _agent_call(s, base, "/heartbeat", {"id": ids[idle.url], "queue_length": 0})

        status, headers, body = await _chat(s, base, short)
        assert status == 200, body
        assert headers["x-iir-route"].startswith("small-to-agents; least-loaded; ")
        assert headers["x-iir-backend"] == f"agents/{ids[idle.url]}"  # the shorter queue wins
        assert body["choices"][0]["message"]["content"] == DEMO_ANSWER
        assert upstream.calls == 0

        # the queues change (heartbeats): the other agent is now the less loaded one
        await _agent_call(s, base, "/heartbeat", {"id": ids[busy.url], "queue_length": 0})
        await _agent_call(s, base, "/heartbeat", {"id": ids[idle.url], "queue_length": 9})
        status, headers, _ = await _chat(s, base, short)
        assert status == 200 and headers["x-iir-backend"] == f"agents/{ids[busy.url]}"
        assert upstream.calls == 0

        # every agent has a queue: the idle cluster (the route's overflow) is the least loaded
        await _agent_call(s, base, "/heartbeat", {"id": ids[busy.url], "queue_length": 2})
        status, headers, _ = await _chat(s, base, short)
        assert status == 200 and headers["x-iir-backend"] == "cluster"
        assert upstream.calls == 1

        long_text = " ".join(f"word{i} and some more context" for i in range(380))
        long = {"model": "auto", "messages": [{"role": "user", "content": long_text}]}
        assert 2900 <= counter.count_request(long, "chat", "auto") <= 3100  # ~3,000 tokens
        status, headers, body = await _chat(s, base, long)
        assert status == 200, body
        assert headers["x-iir-route"].startswith("default; ") and headers["x-iir-backend"] == "cluster"
        assert upstream.calls == 2

        status, headers, body = await _chat(s, base, {**short, "tools": TOOLS})
        assert status == 200, body
        assert headers["x-iir-route"].startswith("default; ") and headers["x-iir-backend"] == "cluster"
        assert upstream.calls == 3
        assert upstream.bodies[-1]["tools"] == TOOLS
        assert upstream.bodies[-1]["model"] == "meta-llama/Llama-3.1-70B-Instruct"  # the cluster's model_map
