"""Agent registration, heartbeats and heartbeat expiry through the real router's agent API:
the structured log events and the agent metrics say exactly what happened."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import aiohttp
import orjson
import pytest

from iir.compile.build import build_table
from iir.observability.logging import configure_logging
from iir.server.run import start

from .promtext import value

pytestmark = pytest.mark.usefixtures("restore_logging")

TOKEN = "agent-registration-token-123456"
SPEC = """
version: 1
agents: {token: "${IIR_AGENT_TOKEN}", heartbeat_timeout: 1s}
backends:
  local: {kind: vllm, url: "http://127.0.0.1:9/v1", models: [tiny]}
routes:
  - {name: any, match: {model: "*"}, to: [local]}
"""


async def _metrics(s: aiohttp.ClientSession, base: str) -> str:
    async with s.get(f"{base}/metrics") as r:
        return await r.text()


async def test_agent_lifecycle_events_and_metrics(tmp_path: Path) -> None:
    spec = tmp_path / "iir.yaml"
    spec.write_text(SPEC)
    env = {"IIR_AGENT_TOKEN": TOKEN, "SQLITE_DB_PATH": str(tmp_path / "iir.db")}
    out = io.StringIO()
    configure_logging(build_table(spec, env).table.server, stream=out)
    server = await start(spec, host="127.0.0.1", port=0, env=env, watch=False)
    base = f"http://127.0.0.1:{server.port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.post(f"{base}/register", json={"url": "http://127.0.0.1:5999", "models": ["tiny"]},
                              headers=auth) as r:
                assert r.status == 200, await r.text()
                agent = (await r.json())["id"]
            async with s.post(f"{base}/heartbeat", json={"id": agent, "queue_length": 3}, headers=auth) as r:
                assert r.status == 200, await r.text()
            text = await _metrics(s, base)
            assert value(text, "iir_agent_events_total", event="registered") == 1
            assert value(text, "iir_agent_queue_length", agent=agent) == 3
            for _ in range(100):  # the monitor notices the silence (timeout 1 s, checked every second)
                text = await _metrics(s, base)
                if value(text, "iir_agent_events_total", event="heartbeat_expired") == 1 and \
                        value(text, "iir_agents", state="stale") == 1:
                    break
                await asyncio.sleep(0.1)
            assert value(text, "iir_agent_events_total", event="heartbeat_expired") == 1
            assert value(text, "iir_agents", state="stale") == 1
            assert value(text, "iir_agents", state="live") == 0
    finally:
        await server.stop()
    docs = [orjson.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    (registered,) = [d for d in docs if d["event"] == "agent_registered"]
    assert (registered["agent"], registered["url"], registered["models"], registered["renewed"]) == \
        (agent, "http://127.0.0.1:5999", ["tiny"], False)
    (expired,) = [d for d in docs if d["event"] == "agent_heartbeat_expired"]
    assert expired["agent"] == agent and expired["level"] == "warning" and expired["timeout"] == 1.0
    assert expired["last_seen_seconds_ago"] >= 1.0
    assert TOKEN not in out.getvalue()
