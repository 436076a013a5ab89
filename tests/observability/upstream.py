"""A loopback OpenAI-compatible upstream for the observability tests.

``/good/v1/chat/completions`` answers like OpenAI (non-streaming, or SSE chunks with a final
usage chunk when ``stream_options.include_usage``); ``/bad/v1/chat/completions`` answers 500 with
an error message that (like a careless provider) echoes the credentials it received. Calls are
counted per path, and the Authorization header of each call is recorded.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
TEXT = "Hello from the tiny model!"


@dataclass
class Upstream:
    url: str
    calls: Counter[str] = field(default_factory=Counter)
    auth: list[str] = field(default_factory=list)


def _completion(model: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
            "usage": USAGE}


def _chunk(model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    doc = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
           "usage": usage}
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def _app(up: Upstream) -> web.Application:
    async def good(request: web.Request) -> web.StreamResponse:
        up.calls["good"] += 1
        up.auth.append(request.headers.get("Authorization", ""))
        body = await request.json()
        model = body.get("model", "")
        if not body.get("stream"):
            return web.json_response(_completion(model))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk(model, {"role": "assistant", "content": ""}))
        for word in TEXT.split(" "):
            await resp.write(_chunk(model, {"content": word + " "}))
        await resp.write(_chunk(model, {}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(_chunk(model, {}, usage=USAGE))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def bad(request: web.Request) -> web.Response:
        up.calls["bad"] += 1
        auth = request.headers.get("Authorization", "")
        up.auth.append(auth)
        return web.json_response({"error": {"message": f"internal failure (got {auth})", "type": "server_error"}},
                                 status=500)

    app = web.Application()
    app.router.add_post("/good/v1/chat/completions", good)
    app.router.add_post("/bad/v1/chat/completions", bad)
    return app


@asynccontextmanager
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream(url="")
    server = TestServer(_app(up), host="127.0.0.1")
    await server.start_server()
    up.url = str(server.make_url("")).rstrip("/")
    try:
        yield up
    finally:
        await server.close()
