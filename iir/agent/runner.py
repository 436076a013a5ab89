"""Run an agent: load the engine, listen, register, and shut down cleanly on SIGINT/SIGTERM.

Order matters: the model is loaded before the port opens (so ``/health`` answering means ready),
and registration starts only once the agent can serve. Shutdown deregisters first, then stops
accepting requests, then closes the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

from iir.agent.config import AgentConfig
from iir.agent.engine import Engine
from iir.agent.registration import RegistrationClient
from iir.agent.service import STATE, create_app, health_report

__all__ = ["build_engine", "serve_agent"]

log = logging.getLogger("iir.agent")


def build_engine(config: AgentConfig) -> Engine:
    """The configured engine, not yet started."""
    if config.engine == "vllm":
        from iir.agent.engine_vllm import VllmEngine

        return VllmEngine(config.model_source(), config.served_name(), config.vllm,
                          context_window=config.context_window)
    from iir.agent.engine_transformers import TransformersEngine

    return TransformersEngine(config.model_source(), config.served_name(), device=config.device,
                              dtype=config.dtype, context_window=config.context_window,
                              default_max_tokens=config.default_max_tokens)


async def _start_unless_stopped(engine: Engine, stop: asyncio.Event) -> bool:
    """Start ``engine``; False (engine closed) if ``stop`` is set first. Start errors propagate."""
    starting = asyncio.ensure_future(engine.start())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if starting.done():
        starting.result()  # EngineStartError etc.
        return True
    log.info("stopping while the engine starts")
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    await engine.close()
    return False


def registration_body(config: AgentConfig, engine: Engine, url: str) -> dict[str, Any]:
    return {"url": url, "name": config.name or url.split("://", 1)[-1], "models": [engine.model],
            "context_window": engine.context_window, "capabilities": list(config.capabilities),
            "engine": engine.kind, "device": engine.device, "max_queue": config.max_queue}


async def serve_agent(config: AgentConfig, *, engine: Engine | None = None,
                      on_ready: Callable[[str], None] | None = None,
                      stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM). Raises EngineStartError if the model cannot load.

    A caller that passes ``engine`` owns it: it must be started already and is not closed here."""
    owned = engine is None
    engine = engine or build_engine(config)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if owned and not await _start_unless_stopped(engine, stop):
        return  # SIGINT/SIGTERM while the model was loading or vLLM was starting
    runner: web.AppRunner | None = None
    registration: RegistrationClient | None = None
    try:
        app = create_app(engine, config)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else config.port
        url = config.public_url(port)
        log.info("agent ready", extra={"url": url, "model": engine.model, "device": engine.device})
        if on_ready is not None:
            on_ready(url)
        if config.router_url:
            state = app[STATE]

            async def load() -> dict[str, Any]:
                report = await health_report(engine, state)
                return {k: report[k] for k in ("queue_length", "in_flight", "tokens_per_second")} | {"url": url}

            registration = RegistrationClient(
                config.router_url, config.token.get_secret_value() if config.token else None,
                registration_body(config, engine, url), load, interval=config.heartbeat_interval)
            await registration.start()
        await stop.wait()
    finally:
        if registration is not None:
            await registration.stop()
        if runner is not None:
            await runner.cleanup()
        if owned:
            await engine.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
