"""Known traffic through the real router (official openai SDK → iir → loopback upstream): the
per-request log lines and the /metrics counters say exactly what happened."""

from __future__ import annotations

import io
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest

from iir.compile.build import build_table
from iir.observability.logging import configure_logging
from iir.server.run import start

from .promtext import samples, value
from .upstream import USAGE, upstream

pytestmark = pytest.mark.usefixtures("restore_logging")

KEY_CI = "sk-iir-ci-0123456789abcdef"
KEY_LIMITED = "sk-iir-limited-0123456789abcdef"
UPSTREAM_TOKEN = "upstream-secret-token-42abcdef"
OPENAI_KEY = "sk-openai-provider-secret-987654321"
ADMIN_TOKEN = "admin-token-secret-555666777"

SPEC = """
version: 1
auth:
  admin_token: "${{IIR_ADMIN_TOKEN}}"
  keys:
    - {{name: ci, key: "${{IIR_KEY_CI}}", models: ["*"]}}
    - {{name: limited, key: "${{IIR_KEY_LIMITED}}", models: ["*"], limits: [two-per-min]}}
backends:
  good: {{kind: openai-compatible, url: "{url}/good/v1", models: [tiny, cached-model, flaky], api_key: "${{UPSTREAM_TOKEN}}"}}
  bad: {{kind: openai-compatible, url: "{url}/bad/v1", models: [flaky, broken], api_key: "${{UPSTREAM_TOKEN}}"}}
  cloud: {{kind: openai, url: "{url}/good/v1", models: [gpt-4o-mini]}}
routes:
  - {{name: cached, match: {{model: cached-model}}, to: [good], cache: true}}
  - {{name: fallback, match: {{model: flaky}}, to: [bad, good]}}
  - {{name: broken, match: {{model: broken}}, to: [bad]}}
  - {{name: direct, match: {{model: tiny}}, to: [good]}}
  - {{name: cloud, match: {{model: gpt-4o-mini}}, to: [cloud]}}
policies:
  cache: {{enabled: false, ttl: 5m}}
  limits:
    two-per-min: {{per: key, requests: 2/min}}
"""

ENV = {"IIR_KEY_CI": KEY_CI, "IIR_KEY_LIMITED": KEY_LIMITED, "UPSTREAM_TOKEN": UPSTREAM_TOKEN,
       "EXTERNAL_OPENAI_KEY": OPENAI_KEY, "IIR_ADMIN_TOKEN": ADMIN_TOKEN}
MESSAGES = [{"role": "user", "content": "Say hello"}]


def write_spec(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "iir.yaml"
    path.write_text(SPEC.format(url=url))
    return path


def _client(port: int, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=20)


async def _chat(client: openai.AsyncOpenAI, rid: str, model: str, **kw):
    return await client.chat.completions.create(model=model, messages=MESSAGES, temperature=0,
                                                extra_headers={"x-request-id": rid}, **kw)


async def test_known_traffic_logs_and_counts_exactly(tmp_path: Path) -> None:
    async with upstream() as up:
        spec = write_spec(tmp_path, up.url)
        out = io.StringIO()
        env = {**ENV, "SQLITE_DB_PATH": str(tmp_path / "iir.db")}
        configure_logging(build_table(spec, env).table.server, stream=out)
        server = await start(spec, host="127.0.0.1", port=0, env=env, watch=False)
        try:
            ci, limited = _client(server.port, KEY_CI), _client(server.port, KEY_LIMITED)
            ok = await _chat(ci, "r-ok", "tiny")
            assert ok.choices[0].message.content == "Hello from the tiny model!"
            stream = await _chat(ci, "r-stream", "tiny", stream=True, stream_options={"include_usage": True})
            assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]).strip()
            await _chat(ci, "r-miss", "cached-model")
            await _chat(ci, "r-hit", "cached-model")
            await _chat(limited, "r-lim-1", "tiny")
            await _chat(limited, "r-lim-2", "tiny")
            with pytest.raises(openai.RateLimitError):
                await _chat(limited, "r-429", "tiny")
            await _chat(ci, "r-fallback", "flaky")
            with pytest.raises(openai.APIStatusError) as broken:
                await _chat(ci, "r-502", "broken")
            assert broken.value.status_code == 502
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.port}/metrics") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
        finally:
            await server.stop()
    assert up.calls == {"good": 6, "bad": 2}  # the cache hit and the 429 never reached an upstream

    docs = [orjson.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    events = [d for d in docs if d["event"] == "request"]
    by_id = {d["request_id"]: d for d in events}
    assert len(events) == len(by_id) == 9, "exactly one log event per request"
    row = {rid: (d["key"], d["model"], d["route"], d["backend"], d["status"], d["cache"], d["ratelimit"],
                 len(d["attempts"])) for rid, d in by_id.items()}
    assert row["r-ok"] == ("ci", "tiny", "direct", "good", 200, "off", "off", 1)
    assert row["r-stream"] == ("ci", "tiny", "direct", "good", 200, "off", "off", 1)
    assert row["r-miss"][:6] == ("ci", "cached-model", "cached", "good", 200, "miss")
    assert row["r-hit"][2:] == ("cached", None, 200, "hit", "off", 0)
    assert row["r-lim-1"][6] == row["r-lim-2"][6] == "ok"
    assert row["r-429"][4:7] == (429, "off", "limited")

    assert row["r-fallback"] == ("ci", "flaky", "fallback", "good", 200, "off", "off", 2)
    assert [a["backend"] for a in by_id["r-fallback"]["attempts"]] == ["bad", "good"]
    assert by_id["r-fallback"]["attempts"][0]["status"] == 500
    assert row["r-502"][:5] == ("ci", "broken", "broken", None, 502) and by_id["r-502"]["error"]
    assert by_id["r-ok"]["prompt_tokens"] == USAGE["prompt_tokens"]
    assert by_id["r-ok"]["completion_tokens"] == USAGE["completion_tokens"]
    assert by_id["r-stream"]["ttft_ms"] is not None and by_id["r-ok"]["ttft_ms"] is None
    for d in events:
        assert d["latency_ms"] >= d["overhead_ms"] >= 0

    m = samples(text)
    assert value(m, "iir_requests_total") == 9
    assert value(m, "iir_requests_total", status="200") == 7
    assert value(m, "iir_requests_total", model="tiny", route="direct", backend="good", status="200") == 4
    assert value(m, "iir_requests_total", status="429") == 1
    assert value(m, "iir_requests_total", model="broken", route="broken", backend="none", status="502") == 1
    assert value(m, "iir_request_errors_total") == 2
    assert value(m, "iir_request_errors_total", code="rate_limit_exceeded") == 1
    assert value(m, "iir_cache_requests_total", route="cached", result="hit") == 1
    assert value(m, "iir_cache_requests_total", route="cached", result="miss") == 1
    assert value(m, "iir_rate_limit_decisions_total", key="limited", result="limited") == 1
    assert value(m, "iir_rate_limit_decisions_total", key="limited", result="ok") == 2
    assert value(m, "iir_fallbacks_total") == 1
    assert value(m, "iir_fallbacks_total", route="fallback", backend="bad", reason="http_500") == 1
    assert value(m, "iir_upstream_attempts_total", backend="bad", outcome="http_500") == 2
    assert value(m, "iir_upstream_attempts_total", backend="good", outcome="ok") == 6
    assert value(m, "iir_tokens_total", type="prompt") == sum(d["prompt_tokens"] or 0 for d in events)
    assert value(m, "iir_tokens_total", type="completion") == sum(d["completion_tokens"] or 0 for d in events)
    assert value(m, "iir_tokens_total", model="tiny", backend="good", type="completion") == 4 * USAGE["completion_tokens"]
    assert value(m, "iir_time_to_first_token_seconds_count") == 1
    assert value(m, "iir_request_duration_seconds_count") == 9
    assert value(m, "iir_requests_in_flight") == 0
    assert value(m, "iir_backend_in_flight") == 0
    assert value(m, "iir_backend_healthy", backend="good") == 1
    assert value(m, "iir_backend_healthy", backend="cloud") == 1  # EXTERNAL_OPENAI_KEY is set
    assert value(m, "iir_config_reloads_total", result="success") == 1
    assert value(m, "iir_spec_info") == 1


async def test_open_circuit_shows_in_backend_health(tmp_path: Path) -> None:
    async with upstream() as up:
        spec = write_spec(tmp_path, up.url)
        spec.write_text(spec.read_text().replace("policies:\n", "policies:\n  health: {failures: 2, cooldown: 60s}\n"))
        env = {**ENV, "SQLITE_DB_PATH": str(tmp_path / "iir.db")}
        server = await start(spec, host="127.0.0.1", port=0, env=env, watch=False)
        try:
            ci = _client(server.port, KEY_CI)
            base = f"http://127.0.0.1:{server.port}"
            async with aiohttp.ClientSession() as s:
                before = await (await s.get(f"{base}/metrics")).text()
                for i in range(2):
                    with pytest.raises(openai.APIStatusError):
                        await _chat(ci, f"r-{i}", "broken")
                after = await (await s.get(f"{base}/metrics")).text()
        finally:
            await server.stop()
    assert value(before, "iir_backend_healthy", backend="bad") == 1
    assert value(after, "iir_backend_healthy", backend="bad") == 0
    assert value(after, "iir_backend_healthy", backend="good") == 1
