"""A client that sends its headers and part of its body, then stalls, gets a 408 after
``server.body_timeout`` (not a handler held forever); the wait is not router overhead; a
shutdown does not wait on it. Raw sockets against the real router."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from iir.compile.compiler import table_to_dict
from iir.server.run import start

SPEC = """
version: 1
server: {{body_timeout: {body_timeout}, drain_timeout: {drain_timeout}}}
state: {{registry: "{{registry}}"}}
backends:
  up: {{kind: openai-compatible, url: "{up}", models: [m]}}
routes:
  - name: by-model
    match: {{model: "*"}}
    to: by-model
"""
BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


def _head(length: int, path: str = "/v1/chat/completions") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of one HTTP/1.1 response (bounded wait: a hang fails)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 20)
    return status, headers, orjson.loads(body)


def _request_events(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "iir.request" and r.getMessage() == "request"]


async def test_stalled_body_gets_408_and_is_not_overhead(upstreams, router, caplog):
    caplog.set_level(logging.INFO, logger="iir.request")
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, body_timeout="500ms", drain_timeout="30s"))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(_head(100) + b'{"model"')  # 8 of 100 bytes, then silence
    await writer.drain()
    status, headers, body = await _answer(reader)
    assert status == 408
    assert headers["connection"].lower() == "close"
    assert body == {"error": {"message": body["error"]["message"], "type": "invalid_request_error",
                              "param": None, "code": "request_timeout"}}
    assert "body_timeout" in body["error"]["message"]
    writer.close()
    assert not up.requests  # nothing reached the backend
    events = [e for e in _request_events(caplog) if e["status"] == 408]
    assert len(events) == 1, _request_events(caplog)
    event = events[0]
    assert event["error"] == "request_timeout"
    assert event["latency_ms"] >= 500
    # the 0.5 s spent waiting on the client is not router overhead (it was ~all of it before)
    assert event["overhead_ms"] <= event["latency_ms"] - 450


async def test_slow_but_timely_body_is_served(upstreams, router, caplog):
    caplog.set_level(logging.INFO, logger="iir.request")
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, body_timeout="5s", drain_timeout="30s"))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(_head(len(BODY)) + BODY[:10])
    await writer.drain()
    await asyncio.sleep(0.3)  # the body is not complete when the handler starts: the timed path
    writer.write(BODY[10:])
    await writer.drain()
    status, _headers, body = await _answer(reader)
    writer.close()
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "Hello from upstream!"
    assert up.requests == [orjson.loads(BODY)]
    (event,) = [e for e in _request_events(caplog) if e["status"] == 200]
    assert event["overhead_ms"] <= event["latency_ms"] - 250  # the client's 0.3 s is excluded


async def test_whole_body_in_one_packet_and_keep_alive(upstreams, router):
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, body_timeout="500ms", drain_timeout="30s"))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    for _ in range(2):  # same connection twice: the fast path leaves keep-alive alone
        writer.write(_head(len(BODY)) + BODY)
        await writer.drain()
        status, headers, _body = await _answer(reader)
        assert status == 200
        assert headers.get("connection", "keep-alive").lower() != "close"
    writer.close()
    assert len(up.requests) == 2


async def test_anthropic_messages_body_is_bounded_too(upstreams, router):
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, body_timeout="500ms", drain_timeout="30s"))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(_head(100, "/v1/messages") + b'{"model"')
    await writer.drain()
    status, _headers, body = await _answer(reader)
    writer.close()
    assert status == 408
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"


async def test_shutdown_does_not_wait_for_a_stalled_body(upstreams, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="iir.request")
    up = await upstreams()
    path = tmp_path / "iir.yaml"
    # a body timeout and a drain far longer than the test may take: only ending the read helps
    path.write_text(SPEC.format(up=up.url, body_timeout="5m", drain_timeout="5m")
                    .replace("{registry}", str(tmp_path / "registry.db")))
    srv = await start(path, host="127.0.0.1", port=0, env={})
    stopped = False
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(_head(100) + b'{"model"')
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is waiting on the body
        stop = asyncio.ensure_future(srv.stop())
        status, _headers, body = await _answer(reader)
        await asyncio.wait_for(stop, 20)
        stopped = True
        writer.close()
        assert status == 408
        assert body["error"]["code"] == "request_timeout"
        assert "shutting down" in body["error"]["message"]
        assert [e["status"] for e in _request_events(caplog)] == [408]
    finally:
        if not stopped:
            await srv.stop()


async def test_body_timeout_is_in_the_compiled_form_only_when_not_default(upstreams, router):
    up = await upstreams()
    default = await router(SPEC.format(up=up.url, body_timeout="30s", drain_timeout="30s"), name="a.yaml")
    short = await router(SPEC.format(up=up.url, body_timeout="1s", drain_timeout="30s"), name="b.yaml")
    assert default.state.table.server.body_timeout == 30.0
    assert short.state.table.server.body_timeout == 1.0
    assert "body_timeout" not in table_to_dict(default.state.table)["server"]  # digests of old specs stay
    assert table_to_dict(short.state.table)["server"]["body_timeout"] == 1.0
    assert default.state.table.digest != short.state.table.digest
