"""Run one router process: load the spec, listen, reload on SIGHUP, drain on SIGTERM/Ctrl-C.

:func:`serve_forever` is what ``iir serve`` runs in each worker; tests start the same
server with :func:`start` on a free loopback port.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from iir import __version__
from iir.observability.logging import log_startup
from iir.policies.runtime import POLICIES
from iir.server.app import create_app
from iir.server.reload import sighup_reload
from iir.server.state import TableState, build_and_persist
from iir.server.workers import StopSignals
from iir.table import RoutingTable

__all__ = ["RunningServer", "announce", "serve_forever", "start"]

log = logging.getLogger("iir.server")

#: Listener limits: big enough that oversized headers reach the app's own check (clean 431).
MAX_LINE = 128 * 1024


#: A credential header in aiohttp's parser errors, which quote the offending header line.
_CREDENTIAL_LINE = re.compile(r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|x-goog-api-key|cookie)(\s*:\s*)"
                              r"[^'\"\n]*")


class _QuietParserLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's protocol logger, minus tracebacks for malformed client requests, and minus
    the credential a malformed header line may carry (the router's own secrets are masked by
    the log formatter; a client's unknown key is not known to it)."""

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        err = exc_info if isinstance(exc_info, BaseException) else None
        text = f"{str(msg) % args if args else msg}: {err or 'bad request'}"
        self.warning("%s", _CREDENTIAL_LINE.sub(r"\1\2***", text))


@dataclass
class RunningServer:
    runner: web.AppRunner
    state: TableState
    port: int
    tasks: set[asyncio.Task[object]] = field(default_factory=set)

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (up to server.drain_timeout), close."""
        await self.runner.cleanup()


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def announce(table: RoutingTable, host: str) -> None:
    """Start-up report: unconfigured backends, open mode (loudly when not on loopback)."""
    for b in table.backends.values():
        if not b.configured:
            log.warning("backend %r is unconfigured and will be skipped: %s", b.name, b.unconfigured_reason)
    if table.auth.open:
        if _is_loopback(host):
            log.warning("no client keys configured: the router is OPEN to anyone who can reach %s", host)
        else:
            log.critical("!!! NO CLIENT KEYS CONFIGURED and listening on %s: the router is OPEN to the network. "
                         "Add auth.keys to iir.yaml !!!", host)


async def start(spec: str | Path, *, host: str | None = None, port: int | None = None, reuse_port: bool = False,
                env: Mapping[str, str] | None = None, watch: bool = True, persist: bool = True,
                workers: int | None = None) -> RunningServer:
    """Load the spec (raises ConfigError), build the app and listen. Port 0 picks a free port.
    ``workers``: how many processes serve this port (``iir serve --workers``; default server.workers),
    for the startup log."""
    path = Path(spec)
    built = await asyncio.to_thread(build_and_persist, path, dict(env if env is not None else os.environ),
                                    persist=persist)
    state = TableState(path=path, built=built, persist=persist)
    if env is not None:
        frozen_env = dict(env)
        state.env = lambda: frozen_env
    table = built.table
    host = host if host is not None else table.server.host
    port = port if port is not None else table.server.port
    for w in built.warnings:
        log.warning("%s", w)
    announce(table, host)
    app = create_app(state, watch=watch)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=table.server.drain_timeout, max_line_size=MAX_LINE,
                           max_field_size=MAX_LINE, logger=_QuietParserLog(logging.getLogger("iir.http"), {}))
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
    await site.start()
    bound = port
    if runner.addresses:
        bound = runner.addresses[0][1]
    index = os.environ.get("IIR_WORKER_INDEX")
    log_startup(log, version=__version__, listen=f"{host}:{bound}", workers=workers or table.server.workers,
                spec=str(path), digest=table.digest, open_auth=table.auth.open,
                backends={n: "ok" if b.configured else f"unconfigured: {b.unconfigured_reason}"
                          for n, b in table.backends.items()},
                worker=int(index) if reuse_port and index and index.isdigit() else None)
    if (policies := app.get(POLICIES)) is not None:
        policies.warm_tokens(table)  # tiktoken, in a thread, when an OpenAI-family model is served
    return RunningServer(runner, state, bound)


async def serve_forever(spec: str | Path, *, host: str | None, port: int | None, reuse_port: bool = False,
                        workers: int | None = None) -> int:
    """Serve until SIGTERM/SIGINT; reload on SIGHUP. Returns the exit status (0 after a drain).

    The same stop signal again more than ``FORCE_AFTER`` (1 s) after the first (a second Ctrl-C)
    exits 130 at once; an earlier repeat is one Ctrl-C delivered twice (process group + a
    supervisor or ``run-demo`` forwarding it) and is ignored."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = StopSignals()

    def on_stop_signal(signum: int) -> None:
        if signals.forces(signum):  # a second Ctrl-C during the drain: stop now
            log.warning("second %s during the drain: exiting now (in-flight requests are cut off)",
                        signal.Signals(signum).name)
            logging.shutdown()  # flush the (buffered) log lines; os._exit skips it
            os._exit(130)
        stop.set()

    # before start-up: a Ctrl-C while a worker is still starting (its siblings may already serve)
    # is a stop request like any other, not asyncio's KeyboardInterrupt with a traceback
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig)
    running = await start(spec, host=host, port=port, reuse_port=reuse_port, workers=workers)
    # The garbage collector was ~15% of a worker's CPU under load: every full collection walked
    # the tens of thousands of start-up objects (modules, spec, table), and the young generation
    # filled every few requests. Start-up objects go to the permanent generation (never scanned
    # again; a table replaced by a reload is still freed by reference counting), and the young
    # generation is collected 10x less often (a bounded few MB of cyclic garbage).
    # A/B under load (benchmarks/ab.py): -15% CPU per request, streaming and not.
    gc.freeze()
    gc.set_threshold(7000, 10, 10)
    sighup_reload(running.state, running.tasks)
    await stop.wait()
    # the drain deadline is the one in force at start-up (aiohttp fixes it on the runner)
    log.info("shutting down: draining in-flight requests (up to %.0fs)", running.state.table.server.drain_timeout)
    await running.stop()
    log.info("stopped")
    return 0
