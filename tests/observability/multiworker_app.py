"""A minimal worker for the multi-worker metrics test: the observe stage and /metrics on a shared
port (SO_REUSEPORT). Run as ``python multiworker_app.py PORT`` with PROMETHEUS_MULTIPROC_DIR set."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from iir.compile.build import build_text
from iir.pipeline.context import RequestContext
from iir.pipeline.observe import make_stage
from iir.server import metrics_api

SPEC = """
version: 1
backends:
  local-a: {kind: vllm, url: "http://127.0.0.1:9/v1", models: [tiny]}
routes:
  - {name: tiny-route, match: {model: tiny}, to: [local-a]}
"""


async def main(port: int) -> None:
    table = build_text(SPEC, "iir.yaml", {}).table
    logging.getLogger("iir").setLevel(logging.WARNING)
    app = web.Application()
    metrics = metrics_api.setup(app)
    metrics.on_spec_loaded(table)
    stage = make_stage(app)

    async def inner(ctx: RequestContext) -> web.StreamResponse:
        ctx.route, ctx.backend, ctx.model = table.routes[0], "local-a", "tiny"
        return web.json_response({"pid": os.getpid()})

    async def handle(request: web.Request) -> web.StreamResponse:
        return await stage(RequestContext(http=request, table=table, request_id="r", endpoint="chat"), inner)

    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", os.getpid(), flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
