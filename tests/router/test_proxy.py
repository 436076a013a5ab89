"""The router proxies OpenAI traffic to real loopback upstreams, driven by the official SDK."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import orjson
import pytest

from iir.backends.openai_openai import _MODEL_FIELD
from tests.router.conftest import UPSTREAM_MODEL, base

SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
backends:
  up: {{kind: openai-compatible, url: "{up}", models: [gpt-test, embed-test]}}
  laptop: {{kind: agent, url: "{agent}", models: [tiny]}}
routes:
  - name: by-model
    match: {{model: "*"}}
    to: by-model
"""


@pytest.fixture
async def setup(upstreams, router):
    up = await upstreams()
    agent = await upstreams("agent")
    srv = await router(SPEC.format(up=up.url, agent=agent.url))
    client = openai.AsyncOpenAI(base_url=base(srv) + "/v1", api_key="unused", max_retries=0)
    yield srv, up, agent, client
    await client.close()


async def test_chat_non_streaming_model_rewritten_and_headers(setup):
    _srv, up, _, client = setup
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], temperature=0.2,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], seed=3, n=1,
        extra_headers={"x-request-id": "req-abc-123"})
    completion = raw.parse()
    assert completion.model == "gpt-test"  # the name the client asked for, not the upstream's
    assert completion.choices[0].message.content == "Hello from upstream!"
    assert completion.usage.total_tokens == 12
    h = raw.headers
    assert h["x-request-id"] == "req-abc-123"
    assert h["x-iir-route"].startswith("by-model")
    assert h["x-iir-backend"] == "up"
    assert h["x-iir-attempts"] == "1"
    assert float(h["x-iir-overhead-ms"]) >= 0
    # every OpenAI parameter went upstream untouched
    sent = up.requests[-1]
    assert sent["tools"][0]["function"]["name"] == "f" and sent["seed"] == 3 and sent["temperature"] == 0.2
    assert up.request_headers[-1]["x-request-id"] == "req-abc-123"


async def test_chat_streaming_with_usage(setup):
    _, _, _, client = setup
    stream = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    text, models, usage = "", set(), None
    async for chunk in stream:
        models.add(chunk.model)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text == "Hello from upstream!"
    assert models == {"gpt-test"}
    assert usage is not None and usage.completion_tokens == 5


async def test_sync_sdk_chat_and_stream(setup):
    srv, _, _, _ = setup

    def use_sync_client() -> tuple[str, str]:
        with openai.OpenAI(base_url=base(srv) + "/v1", api_key="unused", max_retries=0) as c:
            one = c.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
            streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True) if ch.choices)
            return one.choices[0].message.content or "", streamed

    one, streamed = await asyncio.to_thread(use_sync_client)
    assert one == streamed == "Hello from upstream!"


async def test_completions_and_embeddings(setup):
    _, up, _, client = setup
    comp = await client.completions.create(model="gpt-test", prompt="Say hi", max_tokens=5)
    assert comp.model == "gpt-test" and comp.choices[0].text == "Hello from upstream!"
    emb = await client.embeddings.create(model="embed-test", input=["a", "b"])
    assert emb.model == "embed-test" and len(emb.data) == 2 and emb.data[0].embedding == [0.1, 0.2, 0.3]
    assert up.requests[-1]["input"] == ["a", "b"]


async def test_completions_streaming_with_usage_openai_and_agent(setup):
    """Legacy /v1/completions streams (text_completion chunks) through both adapters."""
    _, up, _, client = setup
    for model, want in (("gpt-test", "Hello from upstream!"), ("tiny", "Hello from the tiny model!")):
        stream = await client.completions.create(model=model, prompt="Say hi", stream=True,
                                                 stream_options={"include_usage": True})
        text, finish, usage = "", None, None
        async for chunk in stream:
            assert chunk.model == model and chunk.object == "text_completion"
            if chunk.choices:
                text += chunk.choices[0].text or ""
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        assert text.strip() == want and finish == "stop" and usage is not None and usage.total_tokens > 0
    assert up.requests[-1]["prompt"] == "Say hi" and up.requests[-1]["stream"] is True


async def test_models_list_and_get(setup):
    _, _, _, client = setup
    ids = {m.id async for m in client.models.list()}
    assert {"gpt-test", "embed-test", "tiny"} <= ids
    model = await client.models.retrieve("tiny")
    assert model.id == "tiny" and model.owned_by == "laptop"
    with pytest.raises(openai.NotFoundError) as e:
        await client.models.retrieve("nope")
    assert "gpt-test" in str(e.value)


async def test_agent_backend_chat_stream_and_completions(setup):
    _, _, agent, client = setup
    chat = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=20, temperature=0)
    assert chat.model == "tiny" and chat.choices[0].message.content == "Hello from the tiny model!"
    assert chat.choices[0].finish_reason == "stop" and chat.usage.prompt_tokens == 4
    assert agent.requests[-1] == {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20,
                                  "temperature": 0, "stream": False}
    stream = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True, stream_options={"include_usage": True})
    parts, usage, finish = [], None, None
    async for chunk in stream:
        assert chunk.model == "tiny"
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts).strip() == "Hello from the tiny model!"
    assert finish == "stop" and usage is not None and usage.total_tokens == 10
    comp = await client.completions.create(model="tiny", prompt="hello")
    assert comp.choices[0].text == "Hello from the tiny model!"
    assert agent.requests[-1]["prompt"] == "hello"


async def test_agent_error_mid_stream_raises_in_sdk(setup):
    _, _, agent, client = setup
    agent.fail_stream = True
    stream = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    with pytest.raises(openai.APIError, match="out of memory"):
        async for _ in stream:
            pass


async def test_agent_backend_refuses_tools_and_n_instead_of_dropping_them(setup):
    """The agent protocol carries neither tools nor several choices: a tools request skips the
    agent (400 when nothing else can take it), n=2 is a 400; never a plain one-choice answer."""
    _, _, agent, client = setup
    seen = len(agent.requests)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], tools=tools)
    assert "laptop" in e.value.message and "tools" in e.value.message and e.value.code == "unsupported_request"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], n=2)
    assert bad.value.body["code"] == "unsupported_request" and "n=2" in bad.value.message
    assert len(agent.requests) == seen  # neither reached the agent
    ok = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], n=1)
    assert len(ok.choices) == 1


async def test_request_no_backend_can_ever_take_is_a_400_not_a_retryable_503(upstreams, router):
    """Dropped for what the request is (too long for every context window, needs images): 400,
    which SDKs do not retry; a backend dropped for its state (unconfigured) keeps the 503."""
    up = await upstreams()
    srv = await router(CONTEXT_SPEC.format(up=up.url))
    client = openai.AsyncOpenAI(base_url=base(srv) + "/v1", api_key="unused", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=5000)
        assert e.value.code == "context_length_exceeded" and e.value.param == "messages"
        image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="small", messages=[{"role": "user", "content": image}])
        assert e.value.code == "unsupported_request" and "images" in e.value.message
        with pytest.raises(openai.InternalServerError) as busy:  # unconfigured: state, not the request
            await client.chat.completions.create(model="keyless", messages=[{"role": "user", "content": "hi"}])
        assert busy.value.status_code == 503
        assert up.requests == []  # none of them reached the upstream
    finally:
        await client.close()


CONTEXT_SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
backends:
  up: {{kind: openai-compatible, url: "{up}", models: [small], context_window: 1000}}
  nokey: {{kind: openai, api_key: "${{NOPE_UNSET_KEY:-}}", models: [keyless]}}
routes:
  - name: by-model
    match: {{model: "*"}}
    to: by-model
"""


async def test_n_above_one_skips_the_agent_and_falls_back(upstreams, router):
    up, agent = await upstreams(), await upstreams("agent")
    srv = await router(N_SPEC.format(up=up.url, agent=agent.url))
    client = openai.AsyncOpenAI(base_url=base(srv) + "/v1", api_key="unused", max_retries=0)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], n=2)
        assert raw.headers["x-iir-backend"] == "up" and "laptop!one choice only (n=2)" in raw.headers["x-iir-route"]
        one = await client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}])
        assert one.headers["x-iir-backend"] == "laptop"
    finally:
        await client.close()


N_SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
backends:
  laptop: {{kind: agent, url: "{agent}", models: [tiny]}}
  up: {{kind: openai-compatible, url: "{up}", models: [gpt-test]}}
routes:
  - name: auto
    match: {{model: auto}}
    to: [laptop, up]
"""


async def test_stream_passthrough_bytes_unchanged_except_model(setup):
    srv, up, _, _ = setup
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as s, s.post(base(srv) + "/v1/chat/completions", json=body) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
        received = await r.read()
    # a keep-alive comment before the first event is not the first byte: it is dropped
    keepalive = b": keep-alive comment\n\n"
    assert bytes(up.sent).startswith(keepalive) and UPSTREAM_MODEL.encode() in bytes(up.sent)
    expected = _MODEL_FIELD.sub(b'"model":"gpt-test"', bytes(up.sent)[len(keepalive):])
    assert received == expected


async def test_non_stream_body_passthrough_when_model_matches(upstreams, router):
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, agent="http://127.0.0.1:9").replace(
        "gpt-test, embed-test", UPSTREAM_MODEL))
    raw = orjson.dumps({"model": UPSTREAM_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    async with aiohttp.ClientSession() as s, s.post(base(srv) + "/v1/chat/completions", data=raw,
                                                    headers={"content-type": "application/json"}) as r:
        got = await r.read()
    assert got == json.dumps(up._completion({}, "chat")).encode()  # byte for byte, as the upstream sent it


AGENTS_SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
agents: {{token: "${{AGENT_TOKEN}}"}}
backends:
  fallback: {{kind: openai-compatible, url: "{up}", models: [gpt-test]}}
routes:
  - name: on-device
    match: {{model: auto}}
    to: [agents, fallback]
"""


async def test_registered_agent_serves_route_target_agents(upstreams, router):
    up = await upstreams()
    agent = await upstreams("agent")
    srv = await router(AGENTS_SPEC.format(up=up.url), env={"AGENT_TOKEN": "agent-token-1"})
    client = openai.AsyncOpenAI(base_url=base(srv) + "/v1", api_key="unused", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-iir-backend"] == "fallback"  # no agent registered yet
    async with aiohttp.ClientSession() as s, s.post(
            base(srv) + "/register", json={"url": agent.url, "models": ["tiny"], "name": "laptop"},
            headers={"authorization": "Bearer agent-token-1"}) as r:
        assert r.status == 200, await r.text()
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-iir-backend"].startswith("agents/")
    assert raw.parse().choices[0].message.content == "Hello from the tiny model!"
    assert raw.parse().model == "auto"
    await client.close()


SIZE_SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
backends:
  small: {{kind: openai-compatible, url: "{a}", models: [m]}}
  big: {{kind: openai-compatible, url: "{b}", models: [m]}}
routes:
  - name: short-prompts
    match: {{model: auto, prompt_tokens: {{max: 50}}, tools: false}}
    to: [small]
  - name: rest
    match: {{model: auto}}
    to: [big]
"""


async def test_prompt_size_and_tools_rules_pick_the_route(upstreams, router, sdk):
    a, b = await upstreams(), await upstreams()
    srv = await router(SIZE_SPEC.format(a=a.url, b=b.url))
    client = sdk(srv, "unused")
    short = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}])
    assert short.headers["x-iir-route"].startswith("short-prompts") and short.headers["x-iir-backend"] == "small"
    long = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "lorem ipsum dolor sit amet " * 40}])
    assert long.headers["x-iir-route"].startswith("rest") and long.headers["x-iir-backend"] == "big"
    tools = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert tools.headers["x-iir-backend"] == "big"
    assert short.parse().model == "auto" and a.requests[0]["model"] == "m"  # alias mapped to the backend's model
    await client.close()


async def test_upstream_cookies_are_not_replayed_to_later_requests(upstreams, router):
    """One upstream session serves every client: a Set-Cookie from an upstream (a CDN's bot
    cookie, say) must not be stored and sent along with other clients' requests. (The upstream
    is named by host name: aiohttp's default jar already ignores cookies from IP addresses.)"""
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url.replace("127.0.0.1", "localhost"), agent="http://127.0.0.1:9"))
    up.fail_first, up.status, up.headers = 1, 500, {"set-cookie": "__cf_bm=secret-of-client-a; Path=/"}
    async with openai.AsyncOpenAI(base_url=base(srv) + "/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "a"}])
        await client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "b"}])
    assert len(up.request_headers) == 2
    assert "cookie" not in up.request_headers[-1]
