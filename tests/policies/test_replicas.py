"""Two real router processes (``iir serve``) sharing one real redis-server: a 60 requests/minute
key limit admits 60 ± 2 over both together, a cache entry written through one is a hit on the
other, and an agent registered through one is routable through the other within 1 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest

from iir.agent.demo_model import DEMO_ANSWER
from tests.conftest import free_port
from tests.observability.serving import serve, stop, wait_ready

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]

AGENT_TOKEN = "replica-agent-token-1234"
KEY_LIMITED = "sk-replica-limited-0123456789"
KEY_FREE = "sk-replica-free-0123456789"
SPEC = """
version: 1
state: {store: redis, redis_url: "${REDIS_URL}", fail_mode: open}
auth:
  keys:
    - {name: limited, key: "${IIR_KEY_LIMITED}", limits: [per-key]}
    - {name: free, key: "${IIR_KEY_FREE}"}
agents:
  token: "${IIR_AGENT_TOKEN}"
  heartbeat_timeout: 10s
  allow_networks: [127.0.0.0/8]
backends:
  up: {kind: openai-compatible, url: "${UP_URL}/v1", models: [m1]}
routes:
  - {name: local, match: {model: tiny-demo}, to: agents}
  - {name: all, match: {model: m1}, to: [up]}
policies:
  cache: {ttl: 5m}
  limits:
    per-key: {per: key, requests: 60/min}
"""


@pytest.fixture
async def replicas(tmp_path: Path, redis_url: str, upstream) -> AsyncIterator[list[str]]:
    """Two ``iir serve`` processes on one spec and one Redis; yields their base URLs."""
    spec = tmp_path / "iir.yaml"
    spec.write_text(SPEC)
    env = {"REDIS_URL": redis_url, "UP_URL": upstream.url, "IIR_AGENT_TOKEN": AGENT_TOKEN,
           "IIR_KEY_LIMITED": KEY_LIMITED, "IIR_KEY_FREE": KEY_FREE}
    procs, bases = [], []
    try:
        for name in ("a", "b"):
            home = tmp_path / name
            home.mkdir()
            port = free_port()
            procs.append(serve(spec, port, home, env))  # each its own SQLite registry and cwd
            bases.append(f"http://127.0.0.1:{port}")
        for base, proc in zip(bases, procs, strict=True):
            await wait_ready(base, proc)
        yield bases
    finally:
        errors = [stop(p)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors


async def _post(s: aiohttp.ClientSession, base: str, body: dict, key: str) -> tuple[int, dict, bytes]:
    async with s.post(f"{base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=aiohttp.ClientTimeout(total=20)) as r:
        return r.status, dict(r.headers), await r.read()


async def test_two_processes_share_limit_cache_and_agents(replicas, upstream, start_agent) -> None:
    a, b = replicas
    async with aiohttp.ClientSession() as s:
        # 1. One 60/min key limit over both processes: 60 ± 2 admitted, not 120.
        body = {"model": "m1", "messages": [{"role": "user", "content": "count me"}]}
        sem = asyncio.Semaphore(12)

        async def one(i: int) -> int:
            async with sem:
                return (await _post(s, a if i % 2 else b, body, KEY_LIMITED))[0]

        statuses = await asyncio.gather(*(one(i) for i in range(120)))
        assert set(statuses) <= {200, 429}, statuses
        assert 58 <= statuses.count(200) <= 62, statuses.count(200)
        assert upstream.calls == statuses.count(200)
        for base in (a, b):  # both replicas agree the key is spent
            status, headers, raw = await _post(s, base, body, KEY_LIMITED)
            assert status == 429 and headers["x-ratelimit-remaining-requests"] == "0", raw
            assert int(headers["Retry-After"]) >= 1

        # 2. A cache entry written through one process is a hit on the other.
        calls = upstream.calls
        cached = {"model": "m1", "messages": [{"role": "user", "content": "shared answer"}], "temperature": 0}
        _, h1, _ = await _post(s, a, cached, KEY_FREE)
        _, h2, b2 = await _post(s, b, cached, KEY_FREE)
        assert (h1["x-iir-cache"], h2["x-iir-cache"]) == ("miss", "hit")
        assert b"Hello from upstream" in b2 and upstream.calls == calls + 1

        # 3. An agent registered through process a is routable through process b within 1 s.
        agent = await start_agent(router_url=a, token=AGENT_TOKEN, heartbeat_interval=0.3)
        assert agent.registration is not None
        await asyncio.wait_for(agent.registration.registered.wait(), 60)
        registered_at = time.monotonic()
        backend = f"agents/127.0.0.1:{agent.port}"
        seen_after = None
        while time.monotonic() - registered_at < 5:
            async with s.get(f"{b}/readyz") as r:
                if backend in (await r.json())["routable_backends"]:
                    seen_after = time.monotonic() - registered_at
                    break
            await asyncio.sleep(0.02)
        assert seen_after is not None and seen_after <= 1.0, f"visible on the other replica after {seen_after}"
    client = openai.AsyncOpenAI(base_url=f"{b}/v1", api_key=KEY_FREE, max_retries=0, timeout=60)
    raw = await client.chat.completions.with_raw_response.create(
        model="tiny-demo", messages=[{"role": "user", "content": "Hi!"}], temperature=0)
    assert raw.headers["x-iir-backend"] == backend
    assert raw.parse().choices[0].message.content == DEMO_ANSWER
    await client.close()
