"""Acceptance: the official ``openai`` SDK → the real router → loopback servers speaking the
Anthropic Messages and Gemini wire formats (answers from the documentation fixtures)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest

from .conftest import FakeProvider, Reply
from .providers_kit import load_bytes

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]


def spec(claude: str, claude_b: str, gemini: str) -> str:
    return f"""
version: 1
backends:
  claude:
    kind: anthropic
    url: "{claude}"
    models: [claude-sonnet-4-5]
    model_map: {{claude-sonnet-4-5: claude-sonnet-4-5-20250929}}
    timeouts: {{first_byte: 2s}}
  claude-b:
    kind: anthropic
    url: "{claude_b}"
    api_key: "sk-ant-second"
    models: [claude-sonnet-4-5]
    timeouts: {{first_byte: 2s}}
  gemini:
    kind: google
    url: "{gemini}/v1beta"
    models: [gemini-2.5-flash]
    timeouts: {{first_byte: 2s}}
routes:
  - name: claude-first
    match: {{model: claude-sonnet-4-5}}
    to: [claude, claude-b, gemini]
  - name: by-model
    match: {{model: "*"}}
    to: by-model
"""


ENV = {"EXTERNAL_ANTHROPIC_KEY": "sk-ant-test", "EXTERNAL_GOOGLE_KEY": "g-test"}


@pytest.fixture
async def client(start_router: Callable[..., Any], anthropic_up: FakeProvider, anthropic_up2: FakeProvider,
                 gemini_up: FakeProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    url = await start_router(spec(anthropic_up.url, anthropic_up2.url, gemini_up.url), ENV)
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=15) as c:
        yield c


# ----------------------------------------------------------------------------- Anthropic


async def test_anthropic_plain_chat(client: openai.AsyncOpenAI, anthropic_up: FakeProvider) -> None:
    anthropic_up.answer("anthropic/message_text.json")
    out = await client.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Hi"}])
    assert out.choices[0].message.content == "Hi! My name is Claude."
    assert out.choices[0].finish_reason == "stop"
    assert out.model == "claude-sonnet-4-5"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (2095, 503)
    sent = anthropic_up.last
    assert sent["headers"]["x-api-key"] == "sk-ant-test"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in {k.lower() for k in sent["headers"]}
    assert sent["body"]["model"] == "claude-sonnet-4-5-20250929"
    assert sent["body"]["max_tokens"] == 4096


async def test_anthropic_multi_turn_with_system(client: openai.AsyncOpenAI, anthropic_up: FakeProvider) -> None:
    anthropic_up.answer("anthropic/message_stop_sequence.json")
    out = await client.chat.completions.create(
        model="claude-sonnet-4-5", max_tokens=20, temperature=0.3, stop=[", 5"],
        messages=[{"role": "system", "content": "Count."}, {"role": "user", "content": "Start"},
                  {"role": "assistant", "content": "1"}, {"role": "user", "content": "Go on"}])
    assert out.choices[0].message.content == "1, 2, 3, 4" and out.choices[0].finish_reason == "stop"
    body = anthropic_up.last["body"]
    assert body["system"] == "Count."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["max_tokens"] == 20 and body["temperature"] == 0.3 and body["stop_sequences"] == [", 5"]


async def test_anthropic_stop_reason_max_tokens(client: openai.AsyncOpenAI, anthropic_up: FakeProvider) -> None:
    anthropic_up.answer("anthropic/message_max_tokens.json")
    out = await client.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Tell"}])
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens_details.cached_tokens == 4


async def test_anthropic_tool_round_trip(client: openai.AsyncOpenAI, anthropic_up: FakeProvider) -> None:
    anthropic_up.answer("anthropic/message_tool_use.json", "anthropic/message_text.json")
    messages: list[Any] = [{"role": "user", "content": "Weather in San Francisco?"}]
    first = await client.chat.completions.create(model="claude-sonnet-4-5", messages=messages, tools=TOOLS,
                                                 tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id == "toolu_01A09q90qw90lq917835lq9" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "San Francisco, CA", "unit": "celsius"}
    assert anthropic_up.last["body"]["tools"][0]["input_schema"]["required"] == ["location"]
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "15 degrees"}]
    second = await client.chat.completions.create(model="claude-sonnet-4-5", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "Hi! My name is Claude."
    sent = anthropic_up.last["body"]["messages"]
    assert sent[1]["content"][-1] == {"type": "tool_use", "id": call.id, "name": "get_weather",
                                      "input": {"location": "San Francisco, CA", "unit": "celsius"}}
    assert sent[2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                    "content": "15 degrees"}]}


async def test_anthropic_streaming_text_with_usage(client: openai.AsyncOpenAI, anthropic_up: FakeProvider) -> None:
    anthropic_up.answer("anthropic/stream_text.sse")
    stream = await client.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Hi"}],
                                                  stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "Hello!" and finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (25, 15, 40)
    assert anthropic_up.last["body"]["stream"] is True


async def test_anthropic_streaming_tool_call(client: openai.AsyncOpenAI, anthropic_up: FakeProvider) -> None:
    anthropic_up.answer("anthropic/stream_tool_use.sse")
    stream = await client.chat.completions.create(model="claude-sonnet-4-5", stream=True, tools=TOOLS,
                                                  messages=[{"role": "user", "content": "Weather in SF?"}])
    text, calls, finish = "", {}, None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for tc in delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "args": ""})
            slot["args"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    assert calls[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["args"]) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert finish == "tool_calls"


async def test_anthropic_400_is_relayed_not_retried(client: openai.AsyncOpenAI, anthropic_up: FakeProvider,
                                                    anthropic_up2: FakeProvider) -> None:
    anthropic_up.answer("anthropic/error_invalid_request.json")
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}])
    assert "max_tokens: Field required" in str(e.value)
    assert anthropic_up2.requests == []  # not a reason to try another backend


async def test_anthropic_401_is_a_gateway_error(client: openai.AsyncOpenAI, anthropic_up: FakeProvider,
                                                anthropic_up2: FakeProvider) -> None:
    anthropic_up.answer("anthropic/error_authentication.json")
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502 and "credentials" in str(e.value)
    assert anthropic_up2.requests == []


async def test_anthropic_429_with_retry_after(client: openai.AsyncOpenAI, anthropic_up: FakeProvider,
                                              anthropic_up2: FakeProvider, gemini_up: FakeProvider) -> None:
    for up in (anthropic_up, anthropic_up2):
        up.answer("anthropic/error_rate_limit.json")
    gemini_up.answer("gemini/error_resource_exhausted.json")
    with pytest.raises(openai.RateLimitError) as e:
        await client.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 429
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert len(anthropic_up.requests) == len(anthropic_up2.requests) == len(gemini_up.requests) == 1


async def test_anthropic_529_overloaded_falls_back(client: openai.AsyncOpenAI, anthropic_up: FakeProvider,
                                                   anthropic_up2: FakeProvider) -> None:
    anthropic_up.answer("anthropic/error_overloaded.json")
    anthropic_up2.answer("anthropic/message_text.json")
    raw = await client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers["x-iir-backend"] == "claude-b" and raw.headers["x-iir-attempts"] == "2"
    assert raw.parse().choices[0].message.content == "Hi! My name is Claude."
    assert anthropic_up2.last["headers"]["x-api-key"] == "sk-ant-second"


async def test_anthropic_overloaded_stream_error_event_falls_back(client: openai.AsyncOpenAI, anthropic_up: FakeProvider,
                                                                  anthropic_up2: FakeProvider) -> None:
    anthropic_up.answer("anthropic/stream_error_overloaded.sse")
    anthropic_up2.answer("anthropic/stream_text.sse")
    stream = await client.chat.completions.create(model="claude-sonnet-4-5", stream=True,
                                                  messages=[{"role": "user", "content": "Hi"}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello!" and len(anthropic_up2.requests) == 1


async def test_anthropic_malformed_payload_is_a_clear_502(client: openai.AsyncOpenAI, anthropic_up: FakeProvider,
                                                          anthropic_up2: FakeProvider, gemini_up: FakeProvider) -> None:
    for up in (anthropic_up, anthropic_up2):
        up.script = [Reply("anthropic/message_text.json", raw=b'{"id": "msg_1", "type": "message"}')]
    gemini_up.script = [Reply("gemini/generate_text.json", raw=b'{"candidates": "nope"}')]
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502 and "malformed" in str(e.value)


async def test_anthropic_invalid_json_mid_stream_ends_with_an_error_event(
        client: openai.AsyncOpenAI, anthropic_up: FakeProvider) -> None:
    anthropic_up.script = [Reply("anthropic/stream_text.sse", parts=stream_with_garbage())]
    stream = await client.chat.completions.create(model="claude-sonnet-4-5", stream=True,
                                                  messages=[{"role": "user", "content": "Hi"}])
    text = ""
    with pytest.raises(openai.APIError) as e:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    assert text == "Hello" and "malformed" in str(e.value)


def stream_with_garbage() -> tuple[bytes, bytes]:
    """The documented text stream up to "Hello", then a line that is not JSON, then the rest."""
    raw = load_bytes("anthropic/stream_text.sse")
    cut = raw.index(b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
                    b'"delta": {"type": "text_delta", "text": "!"}}')
    return raw[:cut], b"event: content_block_delta\ndata: {this is not json\n\n" + raw[cut:]


# ----------------------------------------------------------------------------- Gemini


async def test_gemini_plain_chat(client: openai.AsyncOpenAI, gemini_up: FakeProvider) -> None:
    gemini_up.answer("gemini/generate_text.json")
    out = await client.chat.completions.create(model="gemini-2.5-flash", temperature=0.2, max_tokens=50,
                                               messages=[{"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": "What is AI?"}])
    assert out.choices[0].message.content == "AI learns patterns from data to make predictions or decisions."
    assert out.choices[0].finish_reason == "stop" and out.model == "gemini-2.5-flash"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (8, 12, 20)
    sent = gemini_up.last
    assert sent["path"] == "/v1beta/models/gemini-2.5-flash:generateContent" and sent["query"] == {}
    assert sent["headers"]["x-goog-api-key"] == "g-test"
    assert sent["body"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["body"]["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 50}


async def test_gemini_tool_round_trip(client: openai.AsyncOpenAI, gemini_up: FakeProvider) -> None:
    gemini_up.answer("gemini/generate_function_call.json", "gemini/generate_text.json")
    messages: list[Any] = [{"role": "user", "content": "Temperature in London?"}]
    first = await client.chat.completions.create(model="gemini-2.5-flash", messages=messages, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_current_temperature"
    assert json.loads(call.function.arguments) == {"location": "London"}
    assert gemini_up.last["body"]["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 15}'}]
    await client.chat.completions.create(model="gemini-2.5-flash", messages=messages, tools=TOOLS)
    contents = gemini_up.last["body"]["contents"]
    assert contents[1] == {"role": "model", "parts": [{"functionCall": {"name": "get_current_temperature",
                                                                        "args": {"location": "London"}}}]}
    assert contents[2] == {"role": "user", "parts": [{"functionResponse": {"name": "get_current_temperature",
                                                                           "response": {"celsius": 15}}}]}


async def test_gemini_streaming_text_with_usage(client: openai.AsyncOpenAI, gemini_up: FakeProvider) -> None:
    gemini_up.answer("gemini/stream_text.sse")
    stream = await client.chat.completions.create(model="gemini-2.5-flash", stream=True,
                                                  stream_options={"include_usage": True},
                                                  messages=[{"role": "user", "content": "A story"}])
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert text == "Once upon a time, in a quiet library, a book learned to read." and finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (8, 14)
    assert gemini_up.last["path"].endswith(":streamGenerateContent") and gemini_up.last["query"] == {"alt": "sse"}


async def test_gemini_streaming_tool_call(client: openai.AsyncOpenAI, gemini_up: FakeProvider) -> None:
    gemini_up.answer("gemini/stream_function_call.sse")
    stream = await client.chat.completions.create(model="gemini-2.5-flash", stream=True, tools=TOOLS,
                                                  messages=[{"role": "user", "content": "London?"}])
    calls, finish = [], None
    async for chunk in stream:
        calls += chunk.choices[0].delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert [c.function.name for c in calls] == ["get_current_temperature"] and finish == "tool_calls"
    assert json.loads(calls[0].function.arguments) == {"location": "London"}


@pytest.mark.parametrize("fixture", ["gemini/generate_finish_safety.json", "gemini/generate_prompt_blocked.json"])
async def test_gemini_safety_stops(client: openai.AsyncOpenAI, gemini_up: FakeProvider, fixture: str) -> None:
    gemini_up.answer(fixture)
    out = await client.chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "x"}])
    assert out.choices[0].finish_reason == "content_filter"


@pytest.mark.parametrize(("fixture", "exc", "status"), [
    ("gemini/error_invalid_argument.json", openai.BadRequestError, 400),
    ("gemini/error_api_key_invalid.json", openai.APIStatusError, 502),
    ("gemini/error_resource_exhausted.json", openai.RateLimitError, 429),
    ("gemini/error_unavailable.json", openai.APIStatusError, 503),
])
async def test_gemini_errors(client: openai.AsyncOpenAI, gemini_up: FakeProvider, fixture: str, exc: type,
                             status: int) -> None:
    gemini_up.answer(fixture)
    with pytest.raises(exc) as e:
        await client.chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == status
    if status == 429:
        assert e.value.response.headers["retry-after"] == "17"
