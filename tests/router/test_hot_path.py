"""The hot path: the request body is parsed once, and with no translation needed the client's
bytes go upstream unchanged (whitespace, key order, escapes, unknown parameters) and the
upstream's bytes come back unchanged except ``model``. Real router, real loopback upstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.router.conftest import UPSTREAM_MODEL, base

SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
backends:
  up: {{kind: openai-compatible, url: "{up}", models: [gpt-test, "{upstream}"]}}
routes:
  - name: by-model
    match: {{model: "*"}}
    to: by-model
"""
# as a client may really send it: odd spacing, unusual key order, \\u escapes, parameters iir does not know
RAW = (b'{ "messages" : [ {"content": "caf\\u00e9 \\u2603", "role": "user"} ],\n'
       b'  "model":"gpt-test", "temperature": 0.25, "logit_bias": {"50256": -100},\n'
       b'  "some_future_param": {"nested": [1, 2.50, null]}, "user": "u-1" }')


@pytest.fixture
def loads_of_body(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Records every orjson.loads call in this process whose argument holds the request body's
    messages (whatever the module that parses: iir's modules call ``orjson.loads``)."""
    seen: list[Any] = []
    real = orjson.loads

    def counting(data: Any) -> Any:
        raw = data if isinstance(data, (bytes, bytearray, memoryview)) else str(data).encode()
        if b"\\u2603" in bytes(raw):
            seen.append(bytes(raw))
        return real(data)

    monkeypatch.setattr(orjson, "loads", counting)
    yield seen


@pytest.mark.parametrize("stream", [False, True])
async def test_body_parsed_once_and_forwarded_byte_for_byte(upstreams, router, loads_of_body, stream):
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, upstream=UPSTREAM_MODEL))
    raw = RAW.replace(b'"user": "u-1" }', b'"user": "u-1", "stream": true }') if stream else RAW
    async with aiohttp.ClientSession() as s, s.post(base(srv) + "/v1/chat/completions", data=raw,
                                                    headers={"content-type": "application/json"}) as r:
        assert r.status == 200
        await r.read()
    # not re-serialised: the client's exact bytes; a stream whose client did not ask for usage
    # gets stream_options.include_usage spliced in after the opening brace (see test_stream_usage.py)
    sent = raw if not stream else b'{"stream_options":{"include_usage":true},' + raw[1:]
    assert up.raw_requests[-1] == sent
    assert len(loads_of_body) == 1, f"request body parsed {len(loads_of_body)} times"


async def test_model_map_reserialises_only_then(upstreams, router, loads_of_body):
    """With a model_map the upstream needs another model name: then (only then) the body is
    re-serialised, every other field unchanged in value."""
    up = await upstreams()
    spec = SPEC.format(up=up.url, upstream=UPSTREAM_MODEL).replace(
        "models: [gpt-test,", 'model_map: {gpt-test: "' + UPSTREAM_MODEL + '"}, models: [gpt-test,')
    srv = await router(spec)
    async with aiohttp.ClientSession() as s, s.post(base(srv) + "/v1/chat/completions", data=RAW,
                                                    headers={"content-type": "application/json"}) as r:
        assert r.status == 200
        body = await r.json()
    assert body["model"] == "gpt-test"
    assert len(loads_of_body) == 1  # still parsed once
    sent = orjson.loads(up.raw_requests[-1])
    assert sent == {**orjson.loads(RAW), "model": UPSTREAM_MODEL}
