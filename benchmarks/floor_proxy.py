"""The floor: the least an aiohttp proxy can do per request, as a reference for iir.

    python -m benchmarks.floor_proxy --port P --upstream http://127.0.0.1:M

One JSON parse of the body (to read ``model``), one pooled keep-alive upstream request with
the body bytes unchanged, the upstream's bytes relayed unchanged (streams chunk by chunk as
they arrive). No routing table, logging, metrics, auth, cache or rate limits. Same stack as
iir (aiohttp server + client on uvloop, orjson), so ``iir / floor`` measures what iir's own
features cost, and the floor itself shows what the stack allows on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
import orjson
from aiohttp import web

from benchmarks.mock_upstream import JSON_PATH, SSE_PATH
from benchmarks.specs import SSE_MODEL

__all__ = ["main", "make_app"]

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def _proxy(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    body = orjson.loads(raw)
    path = SSE_PATH if body.get("model") == SSE_MODEL else JSON_PATH
    session = request.app[SESSION]
    async with session.post(request.app[UPSTREAM] + path, data=raw,
                            headers={"Content-Type": "application/json"}) as up:
        ctype = up.headers.get("Content-Type", "application/json")
        if body.get("stream"):
            out = web.StreamResponse(status=up.status, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out
        return web.Response(status=up.status, body=await up.read(), headers={"Content-Type": ctype})


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", _proxy)
    app.router.add_get("/readyz", lambda r: asyncio.sleep(0, web.Response(text="ok")))
    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.floor_proxy")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
