"""Loopback servers that speak the real provider wire formats (answers taken from the
fixtures, i.e. the providers' documentation), and the real router in front of them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from iir.compile.build import build_table
from iir.server.app import create_app
from iir.server.state import TableState

from .providers_kit import load_bytes, load_json


@dataclass
class Reply:
    """One scripted answer: a JSON fixture (with status/headers for error fixtures) or an SSE fixture."""

    fixture: str
    raw: bytes | None = None  # overrides the fixture's bytes (malformed payload tests)
    parts: tuple[bytes, ...] = ()  # stream in these parts, pausing between them (mid-stream failures)
    status: int = 200  # HTTP status of a ``raw`` JSON answer (error bodies written by a test)

    async def send(self, request: web.Request) -> web.StreamResponse:
        if self.fixture.endswith(".sse"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            if self.parts:
                try:
                    for part in self.parts:
                        await resp.write(part)
                        await asyncio.sleep(0.2)  # let the router pass the first part to its client
                    await resp.write_eof()
                except ConnectionResetError:
                    pass  # the router dropped the connection after a mid-stream failure (by design)
                return resp
            data = self.raw if self.raw is not None else load_bytes(self.fixture)
            for i in range(0, len(data), 97):  # arbitrary splits, like a real network
                await resp.write(data[i:i + 97])
            await resp.write_eof()
            return resp
        if self.raw is not None:
            return web.Response(body=self.raw, status=self.status, content_type="application/json")
        doc = load_json(self.fixture)
        if "status" in doc and "body" in doc:  # an error fixture
            return web.json_response(doc["body"], status=doc["status"], headers=doc["headers"])
        return web.json_response(doc)


@dataclass
class FakeProvider:
    """Records every request (path, query, headers, JSON body) and answers from ``script``
    (one reply per request; the last one repeats)."""

    script: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def answer(self, *fixtures: str) -> None:
        self.script = [Reply(f) for f in fixtures]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"path": request.path, "query": dict(request.query),
                              "headers": dict(request.headers), "body": json.loads(await request.read())})
        if not self.script:
            return web.json_response({"error": {"message": "no scripted reply"}}, status=500)
        reply = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return await reply.send(request)

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """``await serve(provider, path_pattern)``: a loopback aiohttp server routing POSTs to ``provider``."""
    runners: list[web.AppRunner] = []

    async def start(provider: FakeProvider, *paths: str) -> FakeProvider:
        app = web.Application()
        for path in paths:
            app.router.add_post(path, provider.handle)
        runner, provider.url = await _serve(app)
        runners.append(runner)
        return provider

    yield start
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def anthropic_up(serve: Callable[..., Any]) -> FakeProvider:
    return await serve(FakeProvider(), "/v1/messages")


@pytest.fixture
async def anthropic_up2(serve: Callable[..., Any]) -> FakeProvider:
    return await serve(FakeProvider(), "/v1/messages")


@pytest.fixture
async def gemini_up(serve: Callable[..., Any]) -> FakeProvider:
    return await serve(FakeProvider(), "/v1beta/models/{method}")


@pytest.fixture
async def openai_up(serve: Callable[..., Any]) -> FakeProvider:
    return await serve(FakeProvider(), "/v1/chat/completions")


@pytest.fixture
async def start_router(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await start_router(spec_text, env) -> base_url``: the real router app (default stages and
    resources, as ``iir serve`` builds it) on a free loopback port."""
    runners: list[web.AppRunner] = []

    async def start(spec: str, env: dict[str, str] | None = None) -> str:
        path = tmp_path / f"iir-{len(runners)}.yaml"
        path.write_text(spec)
        full_env = {"SQLITE_DB_PATH": str(tmp_path / "iir.db"), **(env or {})}
        state = TableState(path=path, built=build_table(path, full_env), env=lambda: full_env)
        app = create_app(state, watch=False)
        runner, url = await _serve(app)
        runners.append(runner)
        return url

    yield start
    for r in runners:
        await r.cleanup()
