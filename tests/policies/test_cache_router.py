"""Response cache through the real router: hits skip the backend, TTL, Cache-Control,
streaming replay parsed by the official openai SDK, single-flight."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

SPEC = """
version: 1
state: {{store: {store}, redis_url: "{redis}"}}
backends:
  up: {{kind: openai-compatible, url: "{url}/v1", models: [m1]}}
routes:
  - name: all
    match: {{model: m1}}
    to: [up]
policies:
  cache: {{ttl: {ttl}}}
"""

MSG = [{"role": "user", "content": "Say hello"}]


def spec(url: str, store: str = "memory", redis: str = "", ttl: str = "5m") -> str:
    return SPEC.format(url=url, store=store, redis=redis, ttl=ttl)


async def post(base: str, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.post(f"{base}/v1/chat/completions", json=body,
                                                    headers=headers or {},
                                                    timeout=aiohttp.ClientTimeout(total=20)) as r:
        return r.status, dict(r.headers), await r.read()


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_hit_skips_backend(upstream, start_router, redis_url, store):
    base, _ = await start_router(spec(upstream.url, store, redis_url))
    body = {"model": "m1", "messages": MSG, "temperature": 0}
    s1, h1, b1 = await post(base, body)
    s2, h2, b2 = await post(base, body)
    assert (s1, s2) == (200, 200), b1
    assert h1["x-iir-cache"] == "miss" and h2["x-iir-cache"] == "hit"
    assert upstream.calls == 1
    assert b"Hello from upstream" in b2
    # a different request field is a different key
    s3, h3, _ = await post(base, {**body, "max_tokens": 5})
    assert s3 == 200
    assert h3["x-iir-cache"] == "miss" and upstream.calls == 2


async def test_nondeterministic_bypasses(upstream, start_router):
    base, _ = await start_router(spec(upstream.url))
    body = {"model": "m1", "messages": MSG}  # default temperature 1: not cached
    for _ in range(2):
        _, h, _ = await post(base, body)
        assert h["x-iir-cache"] == "bypass"
    assert upstream.calls == 2
    _, h, _ = await post(base, {**body, "seed": 7})
    _, h, _ = await post(base, {**body, "seed": 7})
    assert h["x-iir-cache"] == "hit" and upstream.calls == 3


async def test_ttl_expiry(upstream, start_router, redis_url):
    base, _ = await start_router(spec(upstream.url, "redis", redis_url, ttl="1s"))
    body = {"model": "m1", "messages": MSG, "temperature": 0}
    await post(base, body)
    _, h, _ = await post(base, body)
    assert h["x-iir-cache"] == "hit"
    await asyncio.sleep(1.3)
    _, h, _ = await post(base, body)
    assert h["x-iir-cache"] == "miss" and upstream.calls == 2


async def test_cache_control_no_cache_and_no_store(upstream, start_router):
    base, _ = await start_router(spec(upstream.url))
    body = {"model": "m1", "messages": MSG, "temperature": 0}
    _, h, _ = await post(base, body, {"Cache-Control": "no-store"})
    assert h["x-iir-cache"] == "miss"
    _, h, _ = await post(base, body)
    assert h["x-iir-cache"] == "miss"  # the no-store answer was not kept
    _, h, _ = await post(base, body, {"Cache-Control": "no-cache"})
    assert h["x-iir-cache"] == "bypass"
    assert upstream.calls == 3
    _, h, _ = await post(base, body)
    assert h["x-iir-cache"] == "hit" and upstream.calls == 3


async def test_stream_replay_parses_in_openai_sdk(upstream, start_router):
    base, _ = await start_router(spec(upstream.url))
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=20)
    kw = dict(model="m1", messages=MSG, temperature=0, stream=True, stream_options={"include_usage": True})
    texts, usages = [], []
    for _ in range(2):
        raw = await client.chat.completions.with_raw_response.create(**kw)
        stream = raw.parse()
        parts, usage, finish = [], None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for ch in chunk.choices:
                parts.append(ch.delta.content or "")
                finish = ch.finish_reason or finish
        texts.append(("".join(parts), finish, raw.headers.get("x-iir-cache")))
        usages.append(usage)
    assert texts[0] == ("Hello from upstream", "stop", "miss")
    assert texts[1] == ("Hello from upstream", "stop", "hit")
    assert usages[1] is not None and usages[1].completion_tokens == 4
    assert upstream.calls == 1
    # the streamed answer also serves the non-streaming form
    resp = await client.chat.completions.with_raw_response.create(model="m1", messages=MSG, temperature=0)
    assert resp.headers["x-iir-cache"] == "hit"
    assert resp.parse().choices[0].message.content == "Hello from upstream"
    assert upstream.calls == 1
    await client.close()


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_single_flight_20_concurrent(upstream, start_router, redis_url, store):
    upstream.delay = 0.5
    base, _ = await start_router(spec(upstream.url, store, redis_url))
    body = {"model": "m1", "messages": [{"role": "user", "content": "single flight"}], "temperature": 0}
    results = await asyncio.gather(*(post(base, body) for _ in range(20)))
    assert [r[0] for r in results] == [200] * 20
    assert upstream.calls == 1
    states = sorted(r[1]["x-iir-cache"] for r in results)
    assert states.count("miss") == 1 and states.count("hit") == 19


async def test_per_route_cache_settings(upstream, start_router):
    """``routes[].cache`` overrides deterministic_only, fields and max_entry_size of policies.cache."""
    base, _ = await start_router(f"""
version: 1
backends:
  up: {{kind: openai-compatible, url: "{upstream.url}/v1", models: [loose, tiny-entries, default]}}
routes:
  - {{name: loose, match: {{model: loose}}, to: [up], cache: {{deterministic_only: false, fields: [messages]}}}}
  - {{name: tiny-entries, match: {{model: tiny-entries}}, to: [up], cache: {{max_entry_size: 64}}}}
  - {{name: default, match: {{model: default}}, to: [up]}}
policies:
  cache: {{ttl: 5m}}
""")
    loose = {"model": "loose", "messages": MSG, "temperature": 0.9, "max_tokens": 10}
    _, h1, _ = await post(base, loose)
    _, h2, _ = await post(base, {**loose, "max_tokens": 99, "temperature": 0.1})  # not key fields here
    assert (h1["x-iir-cache"], h2["x-iir-cache"]) == ("miss", "hit") and upstream.calls == 1
    _, h3, _ = await post(base, {**loose, "messages": [{"role": "user", "content": "other"}]})
    assert h3["x-iir-cache"] == "miss" and upstream.calls == 2

    _, h, _ = await post(base, {"model": "default", "messages": MSG, "temperature": 0.9})
    assert h["x-iir-cache"] == "bypass"  # the policy's deterministic_only still holds elsewhere

    small = {"model": "tiny-entries", "messages": MSG, "temperature": 0}
    for _ in range(2):  # the answer is larger than the route's 64-byte limit: never stored
        _, h, _ = await post(base, small)
        assert h["x-iir-cache"] == "miss"
    assert upstream.calls == 5


async def test_stream_cached_without_client_usage_keeps_the_usage(upstream, start_router):
    """The first client streams without include_usage (the router still asked upstream for it and
    kept the usage-only chunk from that client): the cache entry has the usage, so a later client
    that asks for it, streaming or not, gets it from the hit."""
    base, _ = await start_router(spec(upstream.url))
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=20)
    kw = dict(model="m1", messages=MSG, temperature=0, stream=True)
    raw = await client.chat.completions.with_raw_response.create(**kw)
    first = [c async for c in raw.parse()]
    assert raw.headers["x-iir-cache"] == "miss" and all(c.usage is None and c.choices for c in first)
    assert upstream.bodies[-1]["stream_options"] == {"include_usage": True}
    raw = await client.chat.completions.with_raw_response.create(**kw, stream_options={"include_usage": True})
    usages = [c.usage for c in [c async for c in raw.parse()] if c.usage]
    assert raw.headers["x-iir-cache"] == "hit" and [(u.prompt_tokens, u.completion_tokens, u.total_tokens)
                                                    for u in usages] == [(7, 4, 11)]
    whole = await client.chat.completions.create(model="m1", messages=MSG, temperature=0)
    assert whole.usage is not None and whole.usage.total_tokens == 11 and upstream.calls == 1
    await client.close()
