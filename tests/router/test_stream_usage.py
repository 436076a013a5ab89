"""Stream usage for OpenAI-compatible backends: the router asks upstream for usage
(``stream_options.include_usage``) even when the client did not, records it for limits, logs
and metrics, and keeps the extra usage-only chunk from a client that did not ask for it. Every
other byte of the stream is passed through. Real router, loopback upstream, official openai SDK.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from iir.backends.openai_openai import _MODEL_FIELD, PassthroughStream
from iir.observability.logging import configure_logging
from iir.table import ServerSettings
from tests.router.conftest import UPSTREAM_MODEL, base

SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
backends:
  up: {{kind: openai-compatible, url: "{up}", models: [gpt-test]{extra}}}
routes:
  - name: by-model
    match: {{model: "*"}}
    to: by-model
"""
HI: Any = [{"role": "user", "content": "hi"}]
USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}  # what tests/router/conftest.py reports


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The router's real log output (JSON lines), with the process's logging put back afterwards."""
    root = logging.getLogger()
    handlers, level, iir_level = list(root.handlers), root.level, logging.getLogger("iir").level
    out = io.StringIO()
    configure_logging(ServerSettings(), stream=out)
    yield out
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    logging.getLogger("iir").setLevel(iir_level)


def _requests(out: io.StringIO) -> dict[str, dict[str, Any]]:
    for h in logging.getLogger().handlers:
        h.flush()
    docs = [orjson.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    return {d["request_id"]: d for d in docs if d["event"] == "request"}


async def _metric(server: Any, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(base(server) + "/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_client_without_include_usage_gets_no_usage_chunk_but_the_log_has_tokens(
        upstreams, router, sdk, log_lines):
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, extra=""))
    stream = await sdk(srv).chat.completions.create(model="gpt-test", messages=HI, stream=True,
                                                    extra_headers={"x-request-id": "r-no-usage"})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from upstream!"
    assert all(c.choices for c in chunks), "a usage-only chunk (choices: []) reached the client"
    assert all(c.usage is None for c in chunks)
    assert up.requests[-1]["stream_options"] == {"include_usage": True}  # asked upstream anyway
    assert b'"usage":{' in bytes(up.sent)  # ...and the upstream did send it

    line = _requests(log_lines)["r-no-usage"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 5)
    assert await _metric(srv, "iir_tokens_total", type="completion", backend="up") == 5


async def test_stripped_stream_is_otherwise_byte_for_byte(upstreams, router):
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, extra=""))
    body = {"model": "gpt-test", "messages": HI, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(base(srv) + "/v1/chat/completions", json=body) as r:
        received = await r.read()
    sent = bytes(up.sent)
    events = sent.split(b"\n\n")
    usage_events = [e for e in events if b'"choices":[]' in e]
    assert len(usage_events) == 1 and UPSTREAM_MODEL.encode() in sent
    kept = [e for e in events if e not in usage_events and not e.startswith(b":")]  # nor the leading keep-alive
    assert received == _MODEL_FIELD.sub(b'"model":"gpt-test"', b"\n\n".join(kept))


async def test_client_with_include_usage_gets_it_exactly_once(upstreams, router, sdk, log_lines):
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, extra=""))
    client = sdk(srv)
    raw = orjson.dumps({"model": "gpt-test", "messages": HI, "stream": True,
                        "stream_options": {"include_usage": True}})
    async with aiohttp.ClientSession() as s, s.post(base(srv) + "/v1/chat/completions", data=raw,
                                                    headers={"content-type": "application/json"}) as r:
        assert r.status == 200
        await r.read()
    assert up.raw_requests[-1] == raw  # the client asked itself: its bytes go upstream unchanged

    stream = await client.chat.completions.create(model="gpt-test", messages=HI, stream=True,
                                                  stream_options={"include_usage": True},
                                                  extra_headers={"x-request-id": "r-usage"})
    usages = [c.usage for c in [c async for c in stream] if c.usage is not None]
    assert [u.model_dump(include=set(USAGE)) for u in usages] == [USAGE]
    line = _requests(log_lines)["r-usage"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 5)


async def test_legacy_completions_stream_and_an_explicit_false(upstreams, router, sdk, log_lines):
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, extra=""))
    client = sdk(srv)
    stream = await client.completions.create(model="gpt-test", prompt="Say hi", stream=True,
                                             extra_headers={"x-request-id": "r-legacy"})
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    stream = await client.chat.completions.create(model="gpt-test", messages=HI, stream=True,
                                                  stream_options={"include_usage": False},
                                                  extra_headers={"x-request-id": "r-false"})
    chunks2 = [c async for c in stream]
    assert all(c.choices for c in chunks2) and all(c.usage is None for c in chunks2)
    assert up.requests[-1]["stream_options"] == {"include_usage": True}
    lines = _requests(log_lines)
    assert lines["r-legacy"]["completion_tokens"] == 5 and lines["r-false"]["completion_tokens"] == 5


async def test_stream_usage_false_forwards_the_request_as_sent(upstreams, router, sdk, log_lines):
    """For an OpenAI-compatible server that rejects stream_options: `stream_usage: false`."""
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, extra=", stream_usage: false"))
    raw = orjson.dumps({"model": "gpt-test", "messages": HI, "stream": True})
    async with aiohttp.ClientSession() as s, s.post(base(srv) + "/v1/chat/completions", data=raw,
                                                    headers={"content-type": "application/json",
                                                             "x-request-id": "r-off"}) as r:
        assert r.status == 200
        await r.read()
    assert up.raw_requests[-1] == raw and "stream_options" not in up.requests[-1]
    line = _requests(log_lines)["r-off"]
    assert line["completion_tokens"] is None  # the documented cost of turning it off


# -- the translator alone ---------------------------------------------------------------------

def _stream(strip: bool) -> PassthroughStream:
    return PassthroughStream(replacement=b'"model":"m"', backend="b", strip_usage=strip)


USAGE_EVENT = b'data: {"id":"1","model":"u","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n'


@pytest.mark.parametrize("cut", range(1, 4))
def test_usage_event_dropped_whatever_the_block_boundaries(cut: int) -> None:
    first = b'data: {"id":"1","model":"u","choices":[{"delta":{"content":"x"}}],"usage":null}\n\n'
    lines = [first, USAGE_EVENT, b"\n", b"data: [DONE]\n", b"\n"]
    t = _stream(strip=True)
    out = b"".join(t.feed(b"".join(lines[:cut]))) + b"".join(t.feed(b"".join(lines[cut:])))
    assert out == first.replace(b'"model":"u"', b'"model":"m"') + b"data: [DONE]\n\n"
    assert t.usage == {"prompt_tokens": 3, "completion_tokens": 4} and t.done


def test_usage_kept_when_the_client_asked_or_when_it_rides_on_a_choice() -> None:
    t = _stream(strip=False)
    assert b"".join(t.feed(USAGE_EVENT + b"\n")) == USAGE_EVENT.replace(b'"model":"u"', b'"model":"m"') + b"\n"
    assert t.usage == {"prompt_tokens": 3, "completion_tokens": 4}
    on_choice = (b'data: {"model":"u","choices":[{"delta":{},"finish_reason":"stop"}],'
                 b'"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n')
    t = _stream(strip=True)  # a server that puts usage on the last choice chunk: that chunk stays
    assert b"".join(t.feed(on_choice)) == on_choice.replace(b'"model":"u"', b'"model":"m"')
    assert t.usage == {"prompt_tokens": 1, "completion_tokens": 2}
