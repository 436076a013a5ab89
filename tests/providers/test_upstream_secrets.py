"""A provider that echoes the credentials it received (the key, a header value) never gets them
through the router: not in a 502 body, not in a mid-stream SSE error event, not in a log record.
Every credential of every configured backend is masked, not only the failing backend's.

Real router on loopback, loopback providers speaking their wire formats, official openai SDK."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from .conftest import FakeProvider, Reply
from .providers_kit import load_bytes, load_json

ANTHROPIC_KEY = "sk-ant-api03-SECRET-anthropic-0001"
GOOGLE_KEY = "AIzaSy-SECRET-google-0002"
OPENROUTER_KEY = "sk-or-v1-SECRET-openrouter-0003"
GATEWAY_TOKEN = "gw-SECRET-header-0004"  # a secret custom header of the anthropic backend
SECRETS = (ANTHROPIC_KEY, GOOGLE_KEY, OPENROUTER_KEY, GATEWAY_TOKEN)
ENV = {"EXTERNAL_ANTHROPIC_KEY": ANTHROPIC_KEY, "EXTERNAL_GOOGLE_KEY": GOOGLE_KEY,
       "EXTERNAL_OPENROUTER_KEY": OPENROUTER_KEY, "GATEWAY_TOKEN": GATEWAY_TOKEN}
MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]


def spec(claude: str, gemini: str, router: str) -> str:
    return f"""
version: 1
backends:
  claude:
    kind: anthropic
    url: "{claude}"
    headers: {{x-gateway-token: "${{GATEWAY_TOKEN}}"}}
    models: [claude-sonnet-4-5]
    timeouts: {{first_byte: 2s}}
  gemini:
    kind: google
    url: "{gemini}/v1beta"
    models: [gemini-2.5-flash]
    timeouts: {{first_byte: 2s}}
  openrouter:
    kind: openrouter
    url: "{router}/v1"
    models: [openai/gpt-4o]
    timeouts: {{first_byte: 2s}}
routes:
  - name: by-model
    match: {{model: "*"}}
    to: by-model
"""


@pytest.fixture
async def router_url(start_router: Callable[..., Any], anthropic_up: FakeProvider, gemini_up: FakeProvider,
                     openai_up: FakeProvider) -> str:
    url: str = await start_router(spec(anthropic_up.url, gemini_up.url, openai_up.url), ENV)
    return url


@pytest.fixture
async def client(router_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key="unused", max_retries=0, timeout=15) as c:
        yield c


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every log record (any logger, DEBUG and up) the router writes during the test."""
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.getMessage()} {record.__dict__}")

    root, handler = logging.getLogger(), Grab(logging.DEBUG)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(level)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret} leaked in: {text[:300]}"


def echo_everything() -> str:
    """What a careless provider writes: every credential the router has (incl. other backends')."""
    return f"key {ANTHROPIC_KEY}, header {GATEWAY_TOKEN}, Bearer {OPENROUTER_KEY}, {GOOGLE_KEY}"


async def test_anthropic_401_echoing_credentials(client: openai.AsyncOpenAI, anthropic_up: FakeProvider,
                                                 logs: list[str]) -> None:
    body = {"type": "error", "error": {"type": "authentication_error",
                                       "message": f"invalid x-api-key ({echo_everything()})"}}
    anthropic_up.script = [Reply("x.json", raw=json.dumps(body).encode(), status=401)]
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="claude-sonnet-4-5", messages=MESSAGES)
    assert e.value.status_code == 502
    text = e.value.response.text
    assert "invalid x-api-key" in text and "***" in text and "HTTP 401" in text
    assert anthropic_up.last["headers"]["x-api-key"] == ANTHROPIC_KEY  # it was sent, just never shown
    assert anthropic_up.last["headers"]["x-gateway-token"] == GATEWAY_TOKEN
    assert_no_secret(text, *logs)


async def test_gemini_api_key_invalid_echoing_the_key(client: openai.AsyncOpenAI, gemini_up: FakeProvider,
                                                      logs: list[str]) -> None:
    """Gemini's 400 API_KEY_INVALID is the router's credential failing: a 502 (not the client's 400)
    naming the upstream status, reason and message, and without the key."""
    fx = load_json("gemini/error_api_key_invalid.json")
    fx["body"]["error"]["message"] = f"API key not valid. Please pass a valid API key. (got {GOOGLE_KEY})"
    gemini_up.script = [Reply("x.json", raw=json.dumps(fx["body"]).encode(), status=400)]
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="gemini-2.5-flash", messages=MESSAGES)
    assert e.value.status_code == 502
    error = e.value.response.json()["error"]
    assert "HTTP 400 API_KEY_INVALID" in error["message"] and "API key not valid" in error["message"]
    assert "credentials" in error["message"] and error["type"] != "invalid_request_error"
    assert gemini_up.last["headers"]["x-goog-api-key"] == GOOGLE_KEY
    assert_no_secret(e.value.response.text, *logs)


async def test_anthropic_stream_error_event_echoing_credentials(client: openai.AsyncOpenAI,
                                                                anthropic_up: FakeProvider, logs: list[str]) -> None:
    raw = load_bytes("anthropic/stream_text.sse")
    cut = raw.index(b"event: content_block_stop")
    error = {"type": "error", "error": {"type": "api_error", "message": f"internal ({echo_everything()})"}}
    anthropic_up.script = [Reply("anthropic/stream_text.sse", parts=(
        raw[:cut], b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"))]
    stream = await client.chat.completions.create(model="claude-sonnet-4-5", stream=True, messages=MESSAGES)
    text = ""
    with pytest.raises(openai.APIError) as e:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text == "Hello!" and "internal" in str(e.value) and "***" in str(e.value)
    assert_no_secret(str(e.value), json.dumps(e.value.body), *logs)


async def test_openrouter_401_echoing_the_bearer_token(client: openai.AsyncOpenAI, openai_up: FakeProvider,
                                                       logs: list[str]) -> None:
    body = {"error": {"code": 401, "message": f"No auth credentials found for Bearer {OPENROUTER_KEY}"}}
    openai_up.script = [Reply("x.json", raw=json.dumps(body).encode(), status=401)]
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
    assert e.value.status_code == 502 and "No auth credentials found" in e.value.response.text
    assert openai_up.last["headers"]["Authorization"] == f"Bearer {OPENROUTER_KEY}"
    assert_no_secret(e.value.response.text, *logs)


async def test_openrouter_mid_stream_error_echoing_the_key(router_url: str, openai_up: FakeProvider,
                                                           logs: list[str]) -> None:
    """A pass-through stream: upstream bytes go to the client unchanged, except that an in-stream
    error event (OpenRouter's documented mid-stream error shape) has our credentials masked."""
    chunk = {"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "openai/gpt-4o",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]}
    error = {"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "openai/gpt-4o",
             "provider": "openai", "error": {"code": "server_error", "message": f"upstream said {echo_everything()}"},
             "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}
    openai_up.script = [Reply("x.sse", parts=(b"data: " + json.dumps(chunk).encode() + b"\n\n",
                                              b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n"))]
    async with aiohttp.ClientSession() as http, http.post(
            f"{router_url}/v1/chat/completions",
            json={"model": "openai/gpt-4o", "messages": MESSAGES, "stream": True}) as r:
        status, text = r.status, await r.text()
    assert status == 200 and '"content": "Hel"' in text
    assert "upstream said key ***" in text and text.rstrip().endswith("data: [DONE]")
    assert_no_secret(text, *logs)


def test_which_values_are_credentials() -> None:
    from iir.backends.credentials import backend_secrets, mask_secrets
    from iir.table import Backend

    b = Backend(name="b", kind="openrouter", protocol="openai", base_url="http://x", models=("m",),
                api_key="sk-key-123456", headers=(("X-OpenRouter-Title", "iir-router"), ("anthropic-version", "2023-06-01"),
                                                  ("Authorization", "Bearer tok-abcdef"), ("x-short", "abc")))
    assert backend_secrets(b) == ("Bearer tok-abcdef", "sk-key-123456", "tok-abcdef")
    assert mask_secrets("Bearer tok-abcdef; tok-abcdef; sk-key-123456; iir-router 2023-06-01 abc", [b]) == \
        "***; ***; ***; iir-router 2023-06-01 abc"


@pytest.fixture
async def anthropic_client(router_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=router_url, api_key="unused", max_retries=0, timeout=15) as c:
        yield c


async def test_messages_ingress_error_echoing_credentials(anthropic_client: anthropic.AsyncAnthropic,
                                                          openai_up: FakeProvider, logs: list[str]) -> None:
    """Anthropic-format clients (``/v1/messages``) get the same masking, error body and stream."""
    body = {"error": {"code": 401, "message": f"No auth credentials found ({echo_everything()})"}}
    openai_up.script = [Reply("x.json", raw=json.dumps(body).encode(), status=401)]
    with pytest.raises(anthropic.APIStatusError) as e:
        await anthropic_client.messages.create(model="openai/gpt-4o", max_tokens=5, messages=MESSAGES)
    assert e.value.status_code == 502 and "No auth credentials found" in e.value.body["error"]["message"]
    assert_no_secret(json.dumps(e.value.body), *logs)

    chunk = {"id": "gen-2", "object": "chat.completion.chunk", "created": 1, "model": "openai/gpt-4o",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]}
    error = {"id": "gen-2", "object": "chat.completion.chunk", "created": 1, "model": "openai/gpt-4o",
             "error": {"code": "server_error", "message": f"upstream said {echo_everything()}"},
             "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}
    openai_up.script = [Reply("x.sse", parts=(b"data: " + json.dumps(chunk).encode() + b"\n\n",
                                              b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n"))]
    text = ""
    with pytest.raises(anthropic.APIStatusError) as streamed:
        async with anthropic_client.messages.stream(model="openai/gpt-4o", max_tokens=5, messages=MESSAGES) as s:
            async for delta in s.text_stream:
                text += delta
    assert text == "Hel" and "upstream said key ***" in str(streamed.value)
    assert_no_secret(str(streamed.value), json.dumps(streamed.value.body), *logs)
