"""The OpenRouter, xAI Grok and Venice presets against their documented formats.

Defaults (base URL, key variable, headers) are checked against the providers' documentation
(cited in iir/spec/presets.py); then the real router, configured only through the preset
environment variables (``<PROVIDER>_BASE_URL``, ``EXTERNAL_<PROVIDER>_KEY``), talks to loopback
servers that answer with the documented payloads (tests/fixtures/providers/{openrouter,xai,venice},
each citing its source), driven by the official ``openai`` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import openai
import pytest

from iir.compile.build import build_text
from iir.spec.presets import PRESETS

from .conftest import FakeProvider, Reply
from .providers_kit import load_bytes

HI: list[Any] = [{"role": "user", "content": "Hi"}]
KEYS = {"EXTERNAL_OPENROUTER_KEY": "sk-or-v1-test-key", "EXTERNAL_GROK_KEY": "xai-test-key",
        "EXTERNAL_VENICE_KEY": "venice-test-key"}
SPEC = """
version: 1
backends:
  openrouter: {kind: openrouter, models: [openai/gpt-4o], timeouts: {first_byte: 2s}}
  grok: {kind: grok, models: [grok-4], model_map: {grok-4: grok-4-0709}, timeouts: {first_byte: 2s}}
  venice: {kind: venice, models: [venice-uncensored], timeouts: {first_byte: 2s}}
routes:
  - name: any-cloud
    match: {model: fast}
    to: [openrouter, grok, venice]
  - name: by-model
    match: {model: "*"}
    to: by-model
"""


@pytest.mark.parametrize(("kind", "base_url", "key_env", "url_env", "headers"), [
    # https://openrouter.ai/docs/api-reference/overview: base https://openrouter.ai/api/v1, Bearer key;
    # https://openrouter.ai/docs/app-attribution: optional HTTP-Referer / X-OpenRouter-Title
    ("openrouter", "https://openrouter.ai/api/v1", "EXTERNAL_OPENROUTER_KEY", "OPENROUTER_BASE_URL",
     (("X-OpenRouter-Title", "iir"),)),
    # https://docs.x.ai/docs/api-reference: POST https://api.x.ai/v1/chat/completions, Bearer key
    ("grok", "https://api.x.ai/v1", "EXTERNAL_GROK_KEY", "GROK_BASE_URL", ()),
    # https://docs.venice.ai/api-reference/api-spec: base https://api.venice.ai/api/v1, Bearer key
    ("venice", "https://api.venice.ai/api/v1", "EXTERNAL_VENICE_KEY", "VENICE_BASE_URL", ()),
])
def test_preset_defaults_match_the_documentation(kind: str, base_url: str, key_env: str, url_env: str,
                                                 headers: tuple[tuple[str, str], ...]) -> None:
    preset = PRESETS[kind]
    assert (preset.protocol, preset.base_url, preset.key_env, preset.url_env, preset.headers) == (
        "openai", base_url, key_env, url_env, headers)
    table = build_text(SPEC, "iir.yaml", {key_env: "k-123"}).table
    backend = table.backends[{"openrouter": "openrouter", "grok": "grok", "venice": "venice"}[kind]]
    assert backend.base_url == base_url and backend.api_key == "k-123" and backend.configured
    others = {n: b for n, b in table.backends.items() if n != kind}
    assert all(not b.configured and "no API key" in b.unconfigured_reason for b in others.values())


@pytest.fixture
async def providers(serve: Callable[..., Any]) -> dict[str, FakeProvider]:
    """One loopback server per provider, serving the documented path under its base URL."""
    return {"openrouter": await serve(FakeProvider(), "/api/v1/chat/completions"),
            "grok": await serve(FakeProvider(), "/v1/chat/completions"),
            "venice": await serve(FakeProvider(), "/api/v1/chat/completions")}


@pytest.fixture
async def client(start_router: Callable[..., Any],
                 providers: dict[str, FakeProvider]) -> AsyncIterator[openai.AsyncOpenAI]:
    env = {**KEYS, "OPENROUTER_BASE_URL": providers["openrouter"].url + "/api/v1",
           "GROK_BASE_URL": providers["grok"].url + "/v1", "VENICE_BASE_URL": providers["venice"].url + "/api/v1"}
    url = await start_router(SPEC, env)
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=15) as c:
        yield c


# ----------------------------------------------------------------------------- OpenRouter


async def test_openrouter_chat_headers_and_extra_fields(client: openai.AsyncOpenAI,
                                                        providers: dict[str, FakeProvider]) -> None:
    up = providers["openrouter"]
    up.answer("openrouter/chat_completion.json")
    extra = {"provider": {"order": ["openai", "azure"], "allow_fallbacks": False}, "transforms": ["middle-out"]}
    raw = await client.chat.completions.with_raw_response.create(model="openai/gpt-4o", messages=HI, extra_body=extra)
    out = raw.parse()
    assert out.choices[0].message.content == "The meaning of life is a question people answer for themselves."
    assert out.model == "openai/gpt-4o" and out.usage.total_tokens == 27
    assert json.loads(raw.content)["provider"] == "OpenAI"  # provider-specific fields come through
    sent = up.last
    assert sent["path"] == "/api/v1/chat/completions"
    assert sent["headers"]["Authorization"] == "Bearer sk-or-v1-test-key"
    assert sent["headers"]["X-OpenRouter-Title"] == "iir"
    assert sent["body"]["provider"] == extra["provider"] and sent["body"]["transforms"] == ["middle-out"]


async def test_openrouter_stream_with_keepalive_comments(client: openai.AsyncOpenAI,
                                                         providers: dict[str, FakeProvider]) -> None:
    providers["openrouter"].answer("openrouter/stream_text.sse")
    stream = await client.chat.completions.create(model="openai/gpt-4o", messages=HI, stream=True,
                                                  stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert text == "Build it tall." and finish == "stop" and usage is not None and usage.total_tokens == 20


async def test_openrouter_keepalive_comments_before_the_first_event_are_not_sent(
        client: openai.AsyncOpenAI, providers: dict[str, FakeProvider]) -> None:
    """Comments before the first data event are held back (they are not the first byte, so
    fallback stays possible); comments after it pass through unchanged, like every other byte."""
    providers["openrouter"].answer("openrouter/stream_text.sse")
    body = {"model": "openai/gpt-4o", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as s, s.post(f"{client.base_url}chat/completions", json=body) as r:
        assert r.status == 200
        received = await r.read()
    fixture = load_bytes("openrouter/stream_text.sse")
    first_event = fixture.index(b"\ndata:") + 1
    assert fixture[:first_event].count(b"\n:") == 1 and b"\n: OPENROUTER PROCESSING\n" in fixture[first_event:]
    assert received == fixture[first_event:]


KEEPALIVE = b": OPENROUTER PROCESSING\n\n"
# https://openrouter.ai/docs/api-reference/streaming ("Handling Errors During Streaming") and
# https://openrouter.ai/docs/api-reference/errors: once the HTTP status (200) is sent, a failure
# arrives as a data event with a top-level `error`
ERROR_EVENT = (b'data: {"id":"cmpl-abc123","object":"chat.completion.chunk","created":1234567890,'
               b'"model":"openai/gpt-4o","provider":"openai","error":{"code":"server_error",'
               b'"message":"Provider disconnected unexpectedly"},'
               b'"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}\n\ndata: [DONE]\n\n')


@pytest.mark.parametrize("parts", [
    (KEEPALIVE, KEEPALIVE, ERROR_EVENT),  # keep-alives, then the failure as an error event
    (KEEPALIVE, KEEPALIVE),  # keep-alives, then the stream ends with no event at all
], ids=["error-event", "ends-silently"])
async def test_openrouter_keepalives_then_failure_falls_back(client: openai.AsyncOpenAI,
                                                             providers: dict[str, FakeProvider],
                                                             parts: tuple[bytes, ...]) -> None:
    providers["openrouter"].script = [Reply("openrouter/stream_text.sse", parts=parts)]
    providers["grok"].answer("openai/stream_text.sse")
    raw = await client.chat.completions.with_raw_response.create(model="fast", messages=HI, stream=True)
    assert raw.headers["x-iir-backend"] == "grok" and raw.headers["x-iir-attempts"] == "2"
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text == _openai_fixture_text()


async def test_openrouter_keepalives_do_not_stop_the_first_byte_timeout(
        start_router: Callable[..., Any], providers: dict[str, FakeProvider]) -> None:
    """A provider stuck behind keep-alive comments is caught by `first_byte` and skipped."""
    providers["openrouter"].script = [Reply("openrouter/stream_text.sse", parts=(KEEPALIVE,) * 20)]  # ~4 s
    providers["grok"].answer("openai/stream_text.sse")
    spec = SPEC.replace("openrouter: {kind: openrouter, models: [openai/gpt-4o], timeouts: {first_byte: 2s}}",
                        "openrouter: {kind: openrouter, models: [openai/gpt-4o], timeouts: {first_byte: 500ms}}")
    env = {**KEYS, "OPENROUTER_BASE_URL": providers["openrouter"].url + "/api/v1",
           "GROK_BASE_URL": providers["grok"].url + "/v1"}
    url = await start_router(spec, env)
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=15) as c:
        raw = await c.chat.completions.with_raw_response.create(model="fast", messages=HI, stream=True)
        assert raw.headers["x-iir-backend"] == "grok" and raw.headers["x-iir-attempts"] == "2"
        text = "".join([ch.choices[0].delta.content or "" async for ch in raw.parse() if ch.choices])
    assert text == _openai_fixture_text()


def _openai_fixture_text() -> str:
    events = [line[6:] for line in load_bytes("openai/stream_text.sse").split(b"\n") if line.startswith(b"data: {")]
    return "".join(c["delta"].get("content") or "" for e in events for c in json.loads(e)["choices"])


async def test_openrouter_mid_stream_error_raises_in_the_sdk(client: openai.AsyncOpenAI,
                                                             providers: dict[str, FakeProvider]) -> None:
    providers["openrouter"].answer("openrouter/stream_mid_error.sse")
    stream = await client.chat.completions.create(model="openai/gpt-4o", messages=HI, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as e:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    assert text == "Partial" and "Provider disconnected unexpectedly" in str(e.value)


async def test_openrouter_402_out_of_credits_falls_back(client: openai.AsyncOpenAI,
                                                        providers: dict[str, FakeProvider]) -> None:
    providers["openrouter"].answer("openrouter/error_402.json")
    providers["grok"].answer("xai/chat_completion.json")
    raw = await client.chat.completions.with_raw_response.create(model="fast", messages=HI)
    assert raw.headers["x-iir-backend"] == "grok" and raw.headers["x-iir-attempts"] == "2"
    assert raw.parse().choices[0].message.content == "101 multiplied by 3 is 303."
    assert providers["grok"].last["body"]["model"] == "grok-4-0709"  # model_map, first model of the backend


async def test_openrouter_429_with_retry_after_falls_back(client: openai.AsyncOpenAI,
                                                          providers: dict[str, FakeProvider]) -> None:
    providers["openrouter"].answer("openrouter/error_429.json")
    providers["grok"].answer("openrouter/error_429.json")
    providers["venice"].answer("venice/chat_completion.json")
    raw = await client.chat.completions.with_raw_response.create(model="fast", messages=HI)
    assert raw.headers["x-iir-backend"] == "venice" and raw.headers["x-iir-attempts"] == "3"


async def test_all_out_of_credits_is_a_502_not_the_clients_402(client: openai.AsyncOpenAI,
                                                               providers: dict[str, FakeProvider]) -> None:
    for up in providers.values():
        up.answer("openrouter/error_402.json")
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="fast", messages=HI)
    assert e.value.status_code == 502 and "Insufficient credits" in e.value.message


# ----------------------------------------------------------------------------- xAI Grok


async def test_grok_chat_passes_reasoning_fields(client: openai.AsyncOpenAI,
                                                 providers: dict[str, FakeProvider]) -> None:
    up = providers["grok"]
    up.answer("xai/chat_completion.json")
    raw = await client.chat.completions.with_raw_response.create(model="grok-4", messages=HI)
    out = raw.parse()
    assert out.model == "grok-4" and out.choices[0].message.content == "101 multiplied by 3 is 303."
    assert out.usage.completion_tokens_details.reasoning_tokens == 94
    assert json.loads(raw.content)["choices"][0]["message"]["reasoning_content"] == "101 * 3 = 303."
    sent = up.last
    assert sent["path"] == "/v1/chat/completions" and sent["headers"]["Authorization"] == "Bearer xai-test-key"
    assert sent["body"]["model"] == "grok-4-0709"


async def test_grok_bad_key_400_is_the_routers_credential_not_the_clients(
        client: openai.AsyncOpenAI, providers: dict[str, FakeProvider]) -> None:
    """xAI answers a wrong key with HTTP 400: relaying that 400 would blame the client's request."""
    providers["grok"].answer("xai/error_400_bad_key.json")
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="grok-4", messages=HI)
    assert e.value.status_code == 502
    error = e.value.response.json()["error"]
    assert "rejected the router's credentials (HTTP 400)" in error["message"]
    assert "Incorrect API key provided" in error["message"] and error["type"] != "invalid_request_error"


# ----------------------------------------------------------------------------- Venice


async def test_venice_chat_with_venice_parameters(client: openai.AsyncOpenAI,
                                                  providers: dict[str, FakeProvider]) -> None:
    up = providers["venice"]
    up.answer("venice/chat_completion.json")
    params = {"include_venice_system_prompt": False, "enable_web_search": "off"}
    raw = await client.chat.completions.with_raw_response.create(
        model="venice-uncensored", messages=[{"role": "system", "content": "Be brief."}, *HI],
        extra_body={"venice_parameters": params})
    out = raw.parse()
    assert out.choices[0].message.content == "The sky is blue because air scatters blue light most."
    assert out.usage.prompt_tokens == 612
    assert json.loads(raw.content)["venice_parameters"]["include_venice_system_prompt"] is False
    sent = up.last
    assert sent["path"] == "/api/v1/chat/completions" and sent["headers"]["Authorization"] == "Bearer venice-test-key"
    assert sent["body"]["venice_parameters"] == params


@pytest.mark.parametrize(("fixture", "status", "text"), [
    ("venice/error_401.json", 502, "Authentication failed"),  # the router's key: a gateway error
    ("venice/error_400_validation.json", 400, "Invalid request parameters"),  # the client's request
])
async def test_venice_error_shapes(client: openai.AsyncOpenAI, providers: dict[str, FakeProvider], fixture: str,
                                   status: int, text: str) -> None:
    providers["venice"].script = [Reply(fixture)]
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="venice-uncensored", messages=HI)
    assert e.value.status_code == status and text in e.value.response.json()["error"]["message"]
