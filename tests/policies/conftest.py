"""Policy test fixtures: a counting loopback OpenAI-compatible upstream and a real router app
(the router's own stages with the policy stages in place) on free loopback ports."""

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

from iir.compile.build import build_table
from iir.server.app import create_app
from iir.server.state import TableState
from tests.agent.conftest import start_agent, tiny_engine, tiny_model_dir  # noqa: F401 - real agents (one engine per session)


@dataclass
class Upstream:
    """Counts calls; answers deterministically; ``delay`` holds each answer (single-flight)."""

    calls: int = 0
    delay: float = 0.0
    fail: bool = False
    text: str = "Hello from upstream"
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0  # the most requests this upstream was serving at once

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self._chat(request)
        finally:
            self.active -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        body = await request.json()
        self.bodies.append(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        usage = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
        base = {"id": f"chatcmpl-{self.calls}", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": self.text}, "finish_reason": "stop"}],
                "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base["object"] = "chat.completion.chunk"
        for i, piece in enumerate(self.text.split(" ")):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": " " + piece}
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [
                {"index": 0, "delta": delta, "finish_reason": None}]}) + b"\n\n")
        await resp.write(b"data: " + orjson.dumps({**base, "choices": [
            {"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def make_upstream() -> AsyncIterator[Callable[..., Any]]:
    """``await make_upstream(text=..., delay=..., fail=...) -> Upstream`` on a free port."""
    runners: list[web.AppRunner] = []

    async def make(**kw: Any) -> Upstream:
        up = Upstream(**kw)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", up.chat)
        runner, up.url = await _serve(app)
        runners.append(runner)
        return up

    yield make
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def upstream(make_upstream: Callable[..., Any]) -> Upstream:
    return await make_upstream()


@pytest.fixture
async def start_router(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await start_router(spec_text, env={...}) -> (base_url, app)``; stopped at teardown."""
    runners: list[web.AppRunner] = []
    counter = iter(range(1000))

    async def start(spec: str, env: dict[str, str] | None = None) -> tuple[str, web.Application]:
        path = tmp_path / f"iir-{next(counter)}.yaml"
        path.write_text(spec)
        env = {"SQLITE_DB_PATH": str(tmp_path / "iir.db"), **(env or {})}
        built = build_table(path, env)
        state = TableState(path=path, built=built, env=lambda: env)
        app = create_app(state, watch=False)  # the router's own stages and resources (chain.py)
        runner, url = await _serve(app)
        runners.append(runner)
        return url, app

    yield start
    for r in runners:
        await r.cleanup()
