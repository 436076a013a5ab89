"""Rate limits and shared state through real router instances (one Redis, two routers)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import openai
import pytest

from tests.observability.promtext import value
from tests.policies.test_store_ratelimit import own_redis  # noqa: F401 - fixture

SPEC = """
version: 1
state: {{store: {store}, redis_url: "{redis}", fail_mode: {fail}}}
auth:
  keys:
    - {{name: ci, key: "${{IIR_KEY_CI}}", limits: [{limit}]}}
backends:
  up: {{kind: openai-compatible, url: "{url}/v1", models: [m1]}}
routes:
  - name: all
    match: {{model: m1}}
    to: [up]
policies:
  cache: {{ttl: 5m}}
  limits:
    per-key: {{per: key, requests: 60/min}}
    tokens: {{per: key, tokens: 1000/min}}
"""
ENV = {"IIR_KEY_CI": "sk-test-ci"}
HEADERS = {"Authorization": "Bearer sk-test-ci"}


def spec(url: str, redis: str, *, limit: str = "per-key", store: str = "redis", fail: str = "open") -> str:
    return SPEC.format(url=url, redis=redis, limit=limit, store=store, fail=fail)


async def post(session: aiohttp.ClientSession, base: str, body: dict) -> tuple[int, dict, bytes]:
    async with session.post(f"{base}/v1/chat/completions", json=body, headers=HEADERS,
                            timeout=aiohttp.ClientTimeout(total=20)) as r:
        return r.status, dict(r.headers), await r.read()


async def test_two_routers_share_the_request_limit_and_the_cache(upstream, start_router, redis_url):
    a, _ = await start_router(spec(upstream.url, redis_url), ENV)
    b, _ = await start_router(spec(upstream.url, redis_url), ENV)
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> int:
            async with sem:
                return (await post(s, a if i % 2 else b, body))[0]

        statuses = await asyncio.gather(*(one(i) for i in range(120)))
        assert set(statuses) <= {200, 429}
        assert 58 <= statuses.count(200) <= 62, statuses.count(200)
        status, headers, raw = await post(s, a, body)
        assert status == 429
        assert int(headers["Retry-After"]) >= 1
        assert headers["x-ratelimit-limit-requests"] == "60"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert b'"rate_limit_error"' in raw and b'"rate_limit_exceeded"' in raw


async def test_cache_entry_from_one_router_hits_on_the_other(upstream, start_router, redis_url):
    a, _ = await start_router(spec(upstream.url, redis_url), ENV)
    b, _ = await start_router(spec(upstream.url, redis_url), ENV)
    body = {"model": "m1", "messages": [{"role": "user", "content": "shared"}], "temperature": 0}
    async with aiohttp.ClientSession() as s:
        _, h1, _ = await post(s, a, body)
        _, h2, _ = await post(s, b, body)
    assert (h1["x-iir-cache"], h2["x-iir-cache"]) == ("miss", "hit")
    assert upstream.calls == 1


async def test_429_in_the_openai_sdk(upstream, start_router, redis_url):
    base, _ = await start_router(spec(upstream.url, redis_url), ENV)
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test-ci", max_retries=0, timeout=20)
    for _ in range(60):
        await client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError) as e:
        await client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 429
    assert e.value.response.headers["retry-after"]
    assert e.value.code == "rate_limit_exceeded"
    await client.close()


async def test_token_limit_rejects_then_reconciles(upstream, start_router, redis_url):
    base, _ = await start_router(spec(upstream.url, redis_url, limit="tokens"), ENV)
    big = {"model": "m1", "messages": [{"role": "user", "content": "lorem ipsum dolor " * 400}]}
    mid = {"model": "m1", "messages": [{"role": "user", "content": "word " * 600}]}  # ~600 tokens
    async with aiohttp.ClientSession() as s:
        status, headers, raw = await post(s, base, big)  # estimate > 1000: never fits
        assert status == 429 and b"too large" in raw.lower()
        assert headers["x-ratelimit-limit-tokens"] == "1000"
        assert upstream.calls == 0
        status, headers, _ = await post(s, base, mid)
        assert status == 200
        # the real usage (the upstream reports 11 tokens) replaced the ~600 reserved,
        # so another ~600-token request fits in the same minute
        status, headers, _ = await post(s, base, mid)
        assert status == 200, "reservation was not reconciled with the real usage"
        assert upstream.calls == 2


@pytest.mark.parametrize("fail", ["open", "closed"])
async def test_redis_killed_mid_test(upstream, start_router, own_redis, fail, caplog):  # noqa: F811
    proc, url = own_redis
    base, _ = await start_router(spec(upstream.url, url, fail=fail), ENV)
    cached = {"model": "m1", "messages": [{"role": "user", "content": "c"}], "temperature": 0}
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as s:
        assert (await post(s, base, cached))[0] == 200
        proc.kill()
        proc.wait(timeout=10)
        caplog.clear()
        for _ in range(10):
            status, headers, raw = await asyncio.wait_for(post(s, base, cached), 10)
            if fail == "open":
                assert status == 200, raw
            else:
                assert status == 503 and b"state_store_unavailable" in raw
                assert headers["Retry-After"] == "1"
        async with s.get(f"{base}/metrics") as r:
            metrics = await r.text()
    if fail == "open":
        assert upstream.calls == 11  # cache bypassed while Redis is down, requests still served
    else:
        assert upstream.calls == 1
    # the outage is logged once (per log interval), not once per request
    outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage) == 1, [r.getMessage() for r in outage]
    # each request's log line and the metrics say what the limiter did
    lines = [r.fields for r in caplog.records if r.name == "iir.request"]
    assert len(lines) == 10
    assert {ln["ratelimit"] for ln in lines} == {f"fail-{fail}"}
    assert {ln["status"] for ln in lines} == {200 if fail == "open" else 503}
    if fail == "open":
        assert {ln["cache"] for ln in lines} == {"bypass"}
    assert value(metrics, "iir_rate_limit_decisions_total", key="ci", result=f"fail-{fail}") == 10


async def test_per_model_and_per_route_limits(make_upstream, start_router):
    up = await make_upstream()
    base, _ = await start_router(f"""
version: 1
backends:
  up: {{kind: openai-compatible, url: "{up.url}/v1", models: [m1, m2]}}
routes:
  - {{name: capped, match: {{model: m1}}, to: [up], limits: [route-cap]}}
  - {{name: open, match: {{model: m2}}, to: [up]}}
policies:
  limits:
    per-model: {{per: model, requests: 3/min}}
    route-cap: {{per: route, requests: 2/min}}
""")

    async def ask(model: str) -> tuple[int, dict, bytes]:
        async with aiohttp.ClientSession() as s, s.post(
                f"{base}/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}]},
                timeout=aiohttp.ClientTimeout(total=20)) as r:
            return r.status, dict(r.headers), await r.read()

    m1 = [await ask("m1") for _ in range(3)]
    assert [r[0] for r in m1] == [200, 200, 429]
    assert b"route-cap" in m1[2][2] and m1[2][1]["x-ratelimit-limit-requests"] == "2"
    m2 = [await ask("m2") for _ in range(4)]  # its own per-model counter; no route cap on `open`
    assert [r[0] for r in m2] == [200, 200, 200, 429]
    assert b"per-model" in m2[3][2] and m2[3][1]["x-ratelimit-limit-requests"] == "3"
    assert up.calls == 5


async def test_token_limit_reconciles_streams_with_usage(upstream, start_router, redis_url):
    """A streamed answer settles with the real usage, whether its client asked for usage or not
    (the router asks the OpenAI-compatible upstream itself); only a backend with
    `stream_usage: false` leaves the estimate standing."""
    base, _ = await start_router(spec(upstream.url, redis_url, limit="tokens"), ENV)
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test-ci", max_retries=0, timeout=20)
    mid = [{"role": "user", "content": "word " * 600}]  # ~600 tokens reserved per request
    for options in ({"include_usage": True}, None, None):  # each settles to the upstream's 11 tokens
        extra = {"stream_options": options} if options else {}
        stream = await client.chat.completions.create(model="m1", messages=mid, stream=True, **extra)
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from upstream"
        assert [c.usage is not None for c in chunks].count(True) == (1 if options else 0)
    assert upstream.bodies[-1]["stream_options"] == {"include_usage": True}
    assert upstream.calls == 3
    await client.close()

    # the same limit on a backend whose server must not get stream_options: the estimate stands
    off, _ = await start_router(spec(upstream.url, redis_url, limit="tokens").replace(
        "models: [m1]}", "models: [m1], stream_usage: false}").replace("name: ci,", "name: ci2,"), ENV)
    client = openai.AsyncOpenAI(base_url=f"{off}/v1", api_key="sk-test-ci", max_retries=0, timeout=20)
    stream = await client.chat.completions.create(model="m1", messages=mid, stream=True)  # no usage reported
    async for _ in stream:
        pass
    assert "stream_options" not in upstream.bodies[-1]
    with pytest.raises(openai.RateLimitError):  # ~600 kept: another ~600 does not fit in 1,000/min
        await client.chat.completions.create(model="m1", messages=mid, stream=True)
    assert upstream.calls == 4
    await client.close()
