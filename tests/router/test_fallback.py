"""Fallback, timeouts, mid-stream failures and client disconnects against real loopback upstreams."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from tests.conftest import free_port
from tests.router.conftest import base

SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
backends:
  a: {{kind: openai-compatible, url: "{a}", models: [m], timeouts: {{connect: 1s, first_byte: {fb}, idle: 2s, total: 10s}}}}
  b: {{kind: openai-compatible, url: "{b}", models: [m]}}
routes:
  - name: main
    match: {{model: m}}
    to: [a, b]
"""

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def pair(upstreams, router, sdk):
    """Two upstreams a → b behind the router; returns (a, b, client, start(a_url=None, fb=...))."""
    a, b = await upstreams(), await upstreams()

    async def start(a_url: str | None = None, fb: str = "400ms"):
        srv = await router(SPEC.format(a=a_url or a.url, b=b.url, fb=fb))
        return srv, sdk(srv)

    return a, b, start


async def _chat(client: openai.AsyncOpenAI, **kw):
    return await client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], **kw)


async def test_fallback_when_first_refuses_connections(pair):
    _, b, start = pair
    _, client = await start(a_url=f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    raw = await _chat(client)
    assert raw.headers["x-iir-backend"] == "b" and raw.headers["x-iir-attempts"] == "2"
    assert raw.parse().choices[0].message.content == "Hello from upstream!"
    assert len(b.requests) == 1


async def test_fallback_on_500(pair):
    a, b, start = pair
    a.mode, a.status = "status", 500
    _, client = await start()
    raw = await _chat(client)
    assert raw.headers["x-iir-backend"] == "b" and raw.headers["x-iir-attempts"] == "2"
    assert len(a.requests) == 1 and len(b.requests) == 1


async def test_fallback_on_timeout_before_first_byte(pair):
    a, _b, start = pair
    a.mode = "hang"
    _, client = await start(fb="300ms")
    raw = await _chat(client)
    assert raw.headers["x-iir-backend"] == "b"
    await asyncio.wait_for(a.disconnected.wait(), 2)  # the abandoned attempt was closed upstream


async def test_fallback_for_streams_before_first_byte(pair):
    a, _, start = pair
    a.mode, a.status = "status", 503
    _, client = await start()
    stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello from upstream!"


async def test_no_retry_after_first_streamed_byte_and_sdk_raises(pair):
    a, b, start = pair
    a.mode = "break"  # sends a chunk, then drops the connection
    _, client = await start()
    stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    got = []
    with pytest.raises(openai.APIError, match="broke off the stream"):
        async for chunk in stream:
            got.append(chunk)
    assert got, "the first chunk reached the client before the failure"
    assert b.requests == []  # never retried once a byte was sent


async def test_stream_without_done_is_an_error_not_a_silent_truncation(pair):
    a, b, start = pair
    a.mode = "ok_no_done"
    _, client = await start()
    stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    with pytest.raises(openai.APIError, match=r"without \[DONE\]"):
        async for _ in stream:
            pass
    assert b.requests == []


async def test_all_backends_fail_502_surfaces_upstream_message(pair):
    a, b, start = pair
    a.mode = b.mode = "status"
    a.status = b.status = 500
    _, client = await start()
    with pytest.raises(openai.APIStatusError) as e:
        await _chat(client)
    assert e.value.status_code == 502
    assert "boom from upstream" in e.value.message and "HTTP 500" in e.value.message
    assert e.value.response.headers["x-iir-attempts"] == "2"


async def test_timeouts_everywhere_give_504(upstreams, router, sdk):
    a = await upstreams(mode="hang")
    srv = await router(SPEC.format(a=a.url, b=a.url, fb="300ms").replace("to: [a, b]", "to: [a]"))
    client = sdk(srv)
    with pytest.raises(openai.APIStatusError) as e:
        await _chat(client)
    assert e.value.status_code == 504 and e.value.code == "upstream_timeout"


async def test_429_retry_after_honoured_when_it_fits(upstreams, router, sdk):
    a = await upstreams(fail_first=1, status=429, headers={"Retry-After": "0.2"},
                        error_body=b'{"error": {"message": "slow down"}}')
    srv = await router(SPEC.format(a=a.url, b=a.url, fb="5s").replace("to: [a, b]", "to: [a]"))
    client = sdk(srv)
    raw = await _chat(client)
    assert raw.headers["x-iir-attempts"] == "2" and len(a.requests) == 2


async def test_upstream_4xx_is_relayed_not_retried(pair):
    a, b, start = pair
    a.mode, a.status = "status", 400
    a.error_body = b'{"error": {"message": "maximum context length is 8 tokens", "type": "invalid_request_error"}}'
    _, client = await start()
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        await _chat(client)
    assert b.requests == []


async def test_client_disconnect_mid_stream_closes_upstream_at_once(pair):
    a, _, start = pair
    a.mode = "slow"  # streams one chunk, then keeps the response open
    srv, _ = await start()
    async with aiohttp.ClientSession() as s:
        resp = await s.post(base(srv) + "/v1/chat/completions", json={**CHAT, "stream": True})
        first = await resp.content.readline()
        assert first.startswith(b":") or first.startswith(b"data:")
        resp.close()  # the client goes away
        gone = time.monotonic()
    await asyncio.wait_for(a.disconnected.wait(), 1.0)
    assert a.disconnected_at is not None and a.disconnected_at - gone < 1.0


async def test_client_disconnect_while_waiting_closes_upstream(pair):
    a, _, start = pair
    a.mode = "hang"
    srv, _ = await start(fb="20s")
    async with aiohttp.ClientSession() as s:
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.3):
                await s.post(base(srv) + "/v1/chat/completions", json=CHAT)
        gone = time.monotonic()
    await asyncio.wait_for(a.disconnected.wait(), 1.0)
    assert a.disconnected_at is not None and a.disconnected_at - gone < 1.0


async def test_upstream_echoing_our_credentials_is_masked(upstreams, router, sdk):
    a = await upstreams(mode="status", status=500)
    a.error_body = b'{"error": {"message": "internal failure (got Bearer sk-backend-secret-42)"}}'
    spec = SPEC.format(a=a.url, b=a.url, fb="5s").replace("to: [a, b]", "to: [a]").replace(
        "models: [m], timeouts", 'api_key: "${UP_KEY}", models: [m], timeouts')
    srv = await router(spec, env={"UP_KEY": "sk-backend-secret-42"})
    client = sdk(srv)
    with pytest.raises(openai.APIStatusError) as e:
        await _chat(client)
    assert e.value.status_code == 502 and "internal failure" in e.value.message
    assert "sk-backend-secret-42" not in e.value.response.text
    assert a.request_headers[-1]["authorization"] == "Bearer sk-backend-secret-42"


async def test_idle_timeout_mid_stream_ends_with_sse_error_and_closes_upstream(upstreams, router, sdk):
    a = await upstreams(mode="stall")
    spec = SPEC.format(a=a.url, b=a.url, fb="5s").replace("to: [a, b]", "to: [a]").replace("idle: 2s", "idle: 300ms")
    srv = await router(spec)
    client = sdk(srv)
    stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    with pytest.raises(openai.APIError, match=r"timed out \(idle\)"):
        async for _ in stream:
            pass
    await asyncio.wait_for(a.disconnected.wait(), 2)
    assert len(a.requests) == 1
