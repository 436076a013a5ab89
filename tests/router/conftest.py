"""Real loopback servers for the router tests.

* :class:`Upstream`: an aiohttp server speaking OpenAI's wire format (chat/completions/
  embeddings, streaming with usage) whose behaviour a test sets (``mode``): answer, fail
  with a status, hang before headers, break off a stream, or stream slowly forever. It
  records what it received, the exact bytes it streamed, and when a client went away.
* :class:`Agent`: the same for the iir agent protocol (``POST /infer``).
* :func:`router`: the real router (``iir.server.run.start``) on a free loopback port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from iir.server.run import RunningServer, start

UPSTREAM_MODEL = "upstream-model-v1"  # what the fake upstream reports: the router must rewrite it


@dataclass
class Upstream:
    """A loopback OpenAI-compatible server. Set ``mode`` per test."""

    mode: str = "ok"  # ok | status | hang | delay | break | stall | slow | ok_no_done
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    error_body: bytes = b'{"error": {"message": "boom from upstream", "type": "server_error"}}'
    text: str = "Hello from upstream!"
    chunks: int = 3
    requests: list[dict[str, Any]] = field(default_factory=list)
    raw_requests: list[bytes] = field(default_factory=list)  # request bodies exactly as received
    request_headers: list[dict[str, str]] = field(default_factory=list)
    sent: bytearray = field(default_factory=bytearray)  # exact SSE bytes of the last stream
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected_at: float | None = None
    runner: web.AppRunner | None = None
    port: int = 0
    fail_first: int = 0  # with mode "ok": answer `status` to this many requests first

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _completion(self, body: dict[str, Any], endpoint: str) -> dict[str, Any]:
        usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        if endpoint == "embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            return {"object": "list", "model": UPSTREAM_MODEL, "usage": {"prompt_tokens": 3, "total_tokens": 3},
                    "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                             for i, _ in enumerate(inputs)]}
        if endpoint == "completions":
            return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": UPSTREAM_MODEL,
                    "choices": [{"index": 0, "text": self.text, "logprobs": None, "finish_reason": "stop"}],
                    "usage": usage}
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": UPSTREAM_MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text},
                             "logprobs": None, "finish_reason": "stop"}], "usage": usage}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, endpoint: str = "chat") -> bytes:
        if endpoint == "completions":  # legacy completions stream text_completion objects
            return b"data: " + orjson.dumps({
                "id": "cmpl-1", "object": "text_completion", "created": 1, "model": UPSTREAM_MODEL,
                "choices": [{"index": 0, "text": delta.get("content", ""), "logprobs": None,
                             "finish_reason": finish}]}) + b"\n\n"
        return b"data: " + orjson.dumps({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": UPSTREAM_MODEL,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}) + b"\n\n"

    async def _send(self, resp: web.StreamResponse, data: bytes) -> None:
        self.sent += data
        await resp.write(data)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.path.rsplit("/", 1)[-1]
        endpoint = "chat" if endpoint == "completions" and "chat" in request.path else endpoint
        body = await request.json()
        self.requests.append(body)
        self.raw_requests.append(await request.read())
        self.request_headers.append({k.lower(): v for k, v in request.headers.items()})
        if self.mode == "status" or (self.mode == "ok" and len(self.requests) <= self.fail_first):
            return web.Response(status=self.status, body=self.error_body, content_type="application/json",
                                headers=self.headers)
        if self.mode == "delay":
            await asyncio.sleep(1.0)
        if self.mode == "hang":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self._mark_disconnect()
                raise
        if not body.get("stream"):
            return web.json_response(self._completion(body, endpoint))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        self.sent.clear()
        try:
            await self._send(resp, b": keep-alive comment\n\n")
            await self._send(resp, self._chunk({"role": "assistant", "content": ""}, endpoint=endpoint))
            n = len(self.text)
            words = [self.text[i * n // self.chunks:(i + 1) * n // self.chunks] for i in range(self.chunks)]
            for i, word in enumerate(words):
                await self._send(resp, self._chunk({"content": word}, endpoint=endpoint))
                if i == 0 and self.mode == "break":
                    await asyncio.sleep(0.05)
                    assert request.transport is not None
                    request.transport.close()  # die mid-stream
                    return resp
                if i == 0 and self.mode == "stall":
                    await asyncio.sleep(30)  # silent: the router's idle timeout must fire
                if self.mode == "slow":
                    while True:
                        await asyncio.sleep(0.05)
                        await self._send(resp, b": still thinking\n\n")
            await self._send(resp, self._chunk({}, "stop", endpoint))
            opts = body.get("stream_options") or {}
            if opts.get("include_usage"):
                await self._send(resp, b"data: " + orjson.dumps({
                    "id": "chatcmpl-1", "created": 1, "model": UPSTREAM_MODEL,
                    "object": "text_completion" if endpoint == "completions" else "chat.completion.chunk",
                    "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}) + b"\n\n")
            if self.mode != "ok_no_done":
                await self._send(resp, b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self._mark_disconnect()
            raise
        return resp

    def _mark_disconnect(self) -> None:
        if self.disconnected_at is None:
            self.disconnected_at = time.monotonic()
        self.disconnected.set()


@dataclass
class Agent:
    """A loopback iir agent (``POST /infer``)."""

    text: str = "Hello from the tiny model!"
    requests: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0
    fail_stream: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        usage = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
        if not body.get("stream"):
            return web.json_response({"text": self.text, "finish_reason": "stop", "usage": usage, "model": "tiny"})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for word in self.text.split(" "):
            await resp.write(b"data: " + orjson.dumps({"text": word + " "}) + b"\n\n")
        if self.fail_stream:
            await resp.write(b'data: {"error": {"message": "out of memory"}}\n\n')
            return resp
        await resp.write(b"data: " + orjson.dumps({"finish_reason": "stop", "usage": usage}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[], Any]]:
    """Factory of running :class:`Upstream` servers (closed after the test)."""
    made: list[Upstream | Agent] = []

    async def make(kind: str = "openai", **kw: Any) -> Any:
        server: Upstream | Agent = Agent(**kw) if kind == "agent" else Upstream(**kw)
        app = web.Application()
        if isinstance(server, Agent):
            app.router.add_post("/infer", server.handle)
        else:
            for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
                app.router.add_post(path, server.handle)
        server.runner, server.port = await _serve(app)
        made.append(server)
        return server

    yield make
    for s in made:
        assert s.runner is not None
        await s.runner.cleanup()


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: write a spec (``{registry}`` is filled in) and start the real router on it."""
    started: list[RunningServer] = []

    async def make(spec: str, *, env: dict[str, str] | None = None, name: str = "iir.yaml") -> RunningServer:
        path = tmp_path / name
        path.write_text(spec.replace("{registry}", str(tmp_path / "registry.db")))
        server = await start(path, host="127.0.0.1", port=0, env=env if env is not None else {})
        started.append(server)
        return server

    yield make
    for s in started:
        await s.stop()


def base(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def sdk() -> AsyncIterator[Callable[..., Any]]:
    """Factory of official async openai clients on a router (closed after the test, so none is
    left for the garbage collector to close on a finished event loop)."""
    import openai

    made: list[openai.AsyncOpenAI] = []

    def make(server: RunningServer, api_key: str = "k", **kw: Any) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=base(server) + "/v1", api_key=api_key, max_retries=0, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()
