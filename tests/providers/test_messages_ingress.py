"""Acceptance: the official ``anthropic`` SDK → ``POST /v1/messages`` on the real router → an
OpenAI-compatible loopback backend (answers from OpenAI's documentation fixtures)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest

from iir.compile.build import build_table
from iir.server.anthropic_ingress import handle_messages
from iir.server.app import create_app
from iir.server.state import TableState

from .conftest import FakeProvider

SPEC = """
version: 1
auth:
  keys:
    - {{name: team, key: "${{TEAM_KEY}}"}}
backends:
  vllm:
    kind: openai-compatible
    url: "{url}/v1"
    models: [gpt-4o-mini]
routes:
  - name: all
    match: {{model: "*"}}
    to: by-model
"""
TOOL = {"name": "get_weather", "description": "Current weather",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}


@pytest.fixture
async def router_url(start_router: Callable[..., Any], openai_up: FakeProvider) -> str:
    return str(await start_router(SPEC.format(url=openai_up.url), {"TEAM_KEY": "sk-team"}))


@pytest.fixture
async def client(router_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=router_url, api_key="sk-team", max_retries=0, timeout=15) as c:
        yield c


def test_router_app_serves_messages(tmp_path: Path) -> None:
    """``iir serve``'s app factory registers the ingress (not only this test's fixture)."""
    path = tmp_path / "iir.yaml"
    path.write_text(SPEC.format(url="http://127.0.0.1:9"))
    env = {"TEAM_KEY": "k", "SQLITE_DB_PATH": str(tmp_path / "iir.db")}
    app = create_app(TableState(path=path, built=build_table(path, env), env=lambda: env), watch=False)
    found = [r for r in app.router.routes() if r.method == "POST" and r.resource.canonical == "/v1/messages"]
    assert found and found[0].handler is handle_messages


async def test_plain_message(client: anthropic.AsyncAnthropic, openai_up: FakeProvider) -> None:
    openai_up.answer("openai/chat_completion.json")
    msg = await client.messages.create(model="gpt-4o-mini", max_tokens=64, system="Be kind.",
                                       messages=[{"role": "user", "content": "Hello"}])
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "gpt-4o-mini"
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello! How can I assist you today?"
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (19, 10)
    sent = openai_up.last["body"]
    assert sent["messages"] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}]
    assert sent["max_tokens"] == 64 and sent["model"] == "gpt-4o-mini"


async def test_streaming_message(client: anthropic.AsyncAnthropic, openai_up: FakeProvider) -> None:
    openai_up.answer("openai/stream_text.sse")
    async with client.messages.stream(model="gpt-4o-mini", max_tokens=64,
                                      messages=[{"role": "user", "content": "Hello"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello there!"
    assert final.content[0].text == "Hello there!" and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3
    sent = openai_up.last["body"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_tool_use_round_trip(client: anthropic.AsyncAnthropic, openai_up: FakeProvider) -> None:
    openai_up.answer("openai/chat_completion_tool_calls.json", "openai/chat_completion.json")
    messages: list[Any] = [{"role": "user", "content": "Weather in Boston?"}]
    first = await client.messages.create(model="gpt-4o-mini", max_tokens=64, tools=[TOOL], messages=messages)
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert use.type == "tool_use" and use.id == "call_abc123" and use.name == "get_current_weather"
    assert use.input == {"location": "Boston, MA"}
    assert openai_up.last["body"]["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather", "parameters": TOOL["input_schema"]}}]
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "22 C"}]}]
    second = await client.messages.create(model="gpt-4o-mini", max_tokens=64, tools=[TOOL], messages=messages)
    assert second.content[0].text == "Hello! How can I assist you today?"
    sent = openai_up.last["body"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_abc123"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_abc123", "content": "22 C"}


async def test_streaming_tool_use(client: anthropic.AsyncAnthropic, openai_up: FakeProvider) -> None:
    openai_up.answer("openai/stream_tool_calls.sse")
    async with client.messages.stream(model="gpt-4o-mini", max_tokens=64, tools=[TOOL],
                                      messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"location": "Paris, France"}


async def test_errors_come_back_in_anthropic_shape(client: anthropic.AsyncAnthropic, router_url: str,
                                                   openai_up: FakeProvider) -> None:
    with pytest.raises(anthropic.APIStatusError) as e:  # no backend declares this model
        await client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error" and "no-such-model" in e.value.body["error"]["message"]
    async with anthropic.AsyncAnthropic(base_url=router_url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as auth:
            await bad.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert auth.value.body["error"]["type"] == "authentication_error"
    async with aiohttp.ClientSession(base_url=router_url, timeout=aiohttp.ClientTimeout(total=10)) as raw:
        async with raw.post("/v1/messages", headers={"x-api-key": "sk-team"},
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}) as r:
            assert r.status == 400
            assert await r.json() == {"type": "error", "error": {
                "type": "invalid_request_error", "message": "max_tokens: a positive integer is required"}}
        async with raw.post("/v1/messages", headers={"x-api-key": "sk-team", "content-type": "application/json"},
                            data=b"{nope") as r:
            assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"
    assert openai_up.requests == []


async def test_backend_failure_is_an_anthropic_api_error(client: anthropic.AsyncAnthropic,
                                                         openai_up: FakeProvider) -> None:
    openai_up.script = []  # the loopback backend answers 500 "no scripted reply"
    with pytest.raises(anthropic.InternalServerError) as e:
        await client.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502 and e.value.body["error"]["type"] == "api_error"


CACHED_SPEC = SPEC + """
policies:
  cache: {{ttl: 5m}}
"""


async def test_cache_hits_are_answered_in_anthropic_shape(start_router: Callable[..., Any],
                                                          openai_up: FakeProvider) -> None:
    openai_up.answer("openai/chat_completion.json")
    url = await start_router(CACHED_SPEC.format(url=openai_up.url), {"TEAM_KEY": "sk-team"})
    ask: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 64, "extra_body": {"temperature": 0},
                           "messages": [{"role": "user", "content": "Hello"}]}
    async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-team", max_retries=0, timeout=15) as client:
        first = await client.messages.create(**ask)
        again = await client.messages.with_raw_response.create(**ask)
        async with client.messages.stream(**ask) as stream:
            streamed = "".join([t async for t in stream.text_stream])
    assert again.headers.get("x-iir-cache") == "hit"
    assert (await again.parse()).content[0].text == first.content[0].text == streamed == "Hello! How can I assist you today?"
    assert len(openai_up.requests) == 1


async def test_count_tokens(client: anthropic.AsyncAnthropic, router_url: str, openai_up: FakeProvider) -> None:
    short = await client.messages.count_tokens(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    long = await client.messages.count_tokens(model="gpt-4o-mini", system="You are a careful assistant.",
                                              tools=[TOOL], messages=[{"role": "user", "content": "Hi " * 200}])
    assert 0 < short.input_tokens < long.input_tokens
    assert long.input_tokens >= 200
    async with anthropic.AsyncAnthropic(base_url=router_url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError):
            await bad.messages.count_tokens(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert openai_up.requests == []  # counted by the router, no backend call


CLOUD_SPEC = """
version: 1
backends:
  claude: {{kind: anthropic, url: "{claude}", api_key: "sk-ant-test", models: [claude-house]}}
  gemini: {{kind: google, url: "{gemini}/v1beta", api_key: "g-test", models: [gemini-2.5-flash]}}
routes:
  - name: all
    match: {{model: "*"}}
    to: by-model
"""


@pytest.fixture
async def cloud_client(start_router: Callable[..., Any], anthropic_up: FakeProvider,
                       gemini_up: FakeProvider) -> AsyncIterator[anthropic.AsyncAnthropic]:
    url = await start_router(CLOUD_SPEC.format(claude=anthropic_up.url, gemini=gemini_up.url))
    async with anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0, timeout=15) as c:
        yield c


async def test_anthropic_client_to_anthropic_backend_stream(cloud_client: anthropic.AsyncAnthropic,
                                                            anthropic_up: FakeProvider) -> None:
    anthropic_up.answer("anthropic/stream_tool_use.sse")
    async with cloud_client.messages.stream(model="claude-house", max_tokens=100, tools=[TOOL],
                                            messages=[{"role": "user", "content": "Weather in SF?"}]) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Okay, let's check the weather for San Francisco, CA:"
    assert final.content[1].id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert final.content[1].input == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 89
    sent = anthropic_up.last["body"]
    assert sent["tools"][0] == {"name": "get_weather", "description": "Current weather", "input_schema": TOOL["input_schema"]}
    assert sent["max_tokens"] == 100 and sent["stream"] is True


async def test_anthropic_client_to_gemini_backend(cloud_client: anthropic.AsyncAnthropic,
                                                  gemini_up: FakeProvider) -> None:
    gemini_up.answer("gemini/generate_function_call.json", "gemini/generate_text.json")
    messages: list[Any] = [{"role": "user", "content": "Temperature in London?"}]
    first = await cloud_client.messages.create(model="gemini-2.5-flash", max_tokens=100, tools=[TOOL],
                                               messages=messages)
    use = first.content[0]
    assert first.stop_reason == "tool_use" and use.name == "get_current_temperature" and use.input == {"location": "London"}
    messages += [{"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "15 C"}]}]
    second = await cloud_client.messages.create(model="gemini-2.5-flash", max_tokens=100, tools=[TOOL],
                                                messages=messages)
    assert second.content[0].text.startswith("AI learns patterns") and second.stop_reason == "end_turn"
    contents = gemini_up.last["body"]["contents"]
    assert contents[2] == {"role": "user", "parts": [{"functionResponse": {
        "name": "get_current_temperature", "response": {"result": "15 C"}}}]}
