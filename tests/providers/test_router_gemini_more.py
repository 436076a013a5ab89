"""More acceptance through the real router with the official ``openai`` SDK: Gemini multi-turn with
a system prompt and the ``MAX_TOKENS`` stop reason, and fallback across provider protocols
(Anthropic 529 overloaded → Gemini; Gemini 503 UNAVAILABLE → Anthropic), streaming included."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest

from .conftest import FakeProvider


def spec(claude: str, gemini: str) -> str:
    return f"""
version: 1
backends:
  claude:
    kind: anthropic
    url: "{claude}"
    models: [claude-sonnet-4-5]
    timeouts: {{first_byte: 2s}}
  gemini:
    kind: google
    url: "{gemini}/v1beta"
    models: [gemini-2.5-flash]
    timeouts: {{first_byte: 2s}}
routes:
  - name: claude-then-gemini
    match: {{model: smart}}
    to: [claude, gemini]
  - name: gemini-then-claude
    match: {{model: quick}}
    to: [gemini, claude]
  - name: by-model
    match: {{model: "*"}}
    to: by-model
"""


ENV = {"EXTERNAL_ANTHROPIC_KEY": "sk-ant-test", "EXTERNAL_GOOGLE_KEY": "g-test"}
HI: list[Any] = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def client(start_router: Callable[..., Any], anthropic_up: FakeProvider,
                 gemini_up: FakeProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    url = await start_router(spec(anthropic_up.url, gemini_up.url), ENV)
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=15) as c:
        yield c


async def test_gemini_multi_turn_with_system_and_max_tokens(client: openai.AsyncOpenAI,
                                                            gemini_up: FakeProvider) -> None:
    gemini_up.answer("gemini/generate_max_tokens.json")
    out = await client.chat.completions.create(
        model="gemini-2.5-flash", max_tokens=5, top_p=0.9, stop=["\n\n"],
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a law."},
                  {"role": "assistant", "content": "Newton's first."}, {"role": "user", "content": "All three?"}])
    assert out.choices[0].message.content == "The three laws are" and out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (10, 25, 35)
    assert out.usage.completion_tokens_details.reasoning_tokens == 20
    assert out.usage.prompt_tokens_details.cached_tokens == 4
    body = gemini_up.last["body"]
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    assert [(c["role"], c["parts"][0]["text"]) for c in body["contents"]] == [
        ("user", "Name a law."), ("model", "Newton's first."), ("user", "All three?")]
    assert body["generationConfig"] == {"maxOutputTokens": 5, "topP": 0.9, "stopSequences": ["\n\n"]}


async def test_anthropic_529_falls_back_to_gemini(client: openai.AsyncOpenAI, anthropic_up: FakeProvider,
                                                  gemini_up: FakeProvider) -> None:
    anthropic_up.answer("anthropic/error_overloaded.json")
    gemini_up.answer("gemini/generate_text.json")
    raw = await client.chat.completions.with_raw_response.create(model="smart", messages=HI)
    out = raw.parse()
    assert raw.headers["x-iir-backend"] == "gemini" and raw.headers["x-iir-attempts"] == "2"
    assert out.model == "smart" and out.choices[0].message.content.startswith("AI learns patterns")
    assert len(anthropic_up.requests) == 1
    assert gemini_up.last["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"


async def test_gemini_503_falls_back_to_anthropic_stream(client: openai.AsyncOpenAI, anthropic_up: FakeProvider,
                                                         gemini_up: FakeProvider) -> None:
    gemini_up.answer("gemini/error_unavailable.json")
    anthropic_up.answer("anthropic/stream_text.sse")
    stream = await client.chat.completions.create(model="quick", messages=HI, stream=True,
                                                  stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
        assert chunk.model == "quick"
    assert text == "Hello!" and usage is not None and usage.completion_tokens > 0
    assert len(gemini_up.requests) == 1 and anthropic_up.last["body"]["stream"] is True


async def test_overloaded_everywhere_is_a_503_naming_both(client: openai.AsyncOpenAI, anthropic_up: FakeProvider,
                                                          gemini_up: FakeProvider) -> None:
    anthropic_up.answer("anthropic/error_overloaded.json")
    gemini_up.answer("gemini/error_unavailable.json")
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="smart", messages=HI)
    assert e.value.status_code == 503  # like a single overloaded answer: the client may retry later
    message = e.value.response.json()["error"]["message"]
    assert "claude" in message and "gemini" in message and "Overloaded" in message
