"""backends.*.timeouts.first_byte runs from sending the request, not from the start of the attempt.

The upstream here is a raw loopback socket server that accepts the connection, reads the
request and never answers. Its backend's ``connect`` is 5 s and ``first_byte`` 0.5 s: the
router must give up on it after about 0.5 s (504, or fallback to the next candidate), not after
connect + first_byte = 5.5 s. The bound asserted (3 s) is loose on purpose.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import openai
import pytest

SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
backends:
  mute: {{kind: openai-compatible, url: "http://127.0.0.1:{port}/v1", models: [m],
          timeouts: {{connect: 5s, first_byte: 500ms, idle: 5s, total: 30s}}}}
  ok: {{kind: openai-compatible, url: "{ok}", models: [m]}}
routes:
  - name: main
    match: {{model: m}}
    to: {to}
"""


@pytest.fixture
async def mute() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A server that accepts connections, reads what comes and never writes a byte."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, held
    finally:
        for w in held:
            w.close()
        server.close()


async def test_first_byte_timeout_counts_from_the_request_not_the_attempt(mute, upstreams, router, sdk):
    port, held = mute
    ok = await upstreams()
    srv = await router(SPEC.format(port=port, ok=ok.url, to="[mute]"))
    client = sdk(srv)
    began = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    waited = time.monotonic() - began
    assert e.value.status_code == 504 and e.value.code == "upstream_timeout"
    assert "within 0.5s" in e.value.message, e.value.message
    assert held, "the upstream never saw a connection"
    assert waited < 3.0, f"504 after {waited:.1f}s: first_byte (0.5s) counted connect (5s) too"


async def test_fallback_after_first_byte_not_connect_plus_first_byte(mute, upstreams, router, sdk):
    port, _ = mute
    ok = await upstreams()
    srv = await router(SPEC.format(port=port, ok=ok.url, to="[mute, ok]"))
    client = sdk(srv)
    began = time.monotonic()
    raw = await client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}])
    waited = time.monotonic() - began
    assert raw.headers["x-iir-backend"] == "ok" and raw.headers["x-iir-attempts"] == "2"
    assert waited < 3.0, f"fallback after {waited:.1f}s: first_byte (0.5s) counted connect (5s) too"


async def test_first_byte_bounds_stream_requests_the_same_way(mute, upstreams, router, sdk):
    """Streams too, and every new request (each attempt gets its own deadline)."""
    port, _ = mute
    ok = await upstreams()
    srv = await router(SPEC.format(port=port, ok=ok.url, to="[mute]"))
    client = sdk(srv)
    for _ in range(2):
        began = time.monotonic()
        with pytest.raises(openai.APIStatusError) as e:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True)
        assert e.value.status_code == 504
        assert time.monotonic() - began < 3.0
