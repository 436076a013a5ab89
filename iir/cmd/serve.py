"""``iir serve``: run the router."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from pathlib import Path
from typing import NoReturn

import click

from iir.compile.build import build_table
from iir.errors import ConfigError
from iir.observability.logging import collect_secrets, configure_logging

__all__ = ["commands"]


def _cannot_listen(host: str, port: int, e: OSError) -> NoReturn:
    hint = " (is another router already running there?)" if e.errno == errno.EADDRINUSE else ""
    reason = os.strerror(e.errno) if e.errno and e.errno > 0 else str(e)  # gaierror errnos are negative
    click.echo(f"iir serve: cannot listen on {host}:{port}: {reason}{hint}", err=True)
    sys.exit(1)


def _port_free_or_exit(host: str, port: int) -> None:
    """Workers share the port with SO_REUSEPORT, which would also let them join the listening
    group of a router already there (two routers splitting the traffic), and a port another
    program holds would make every worker fail and restart forever. A plain bind (no
    SO_REUSEPORT) fails in both cases: check it once before starting any worker."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT is not "in use"
            probe.bind(addr)
    except OSError as e:
        _cannot_listen(host, port, e)


@click.command()
@click.option("--spec", "spec", default="iir.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The spec file to serve (reloaded when it changes, on SIGHUP and POST /admin/reload).")
@click.option("--host", default=None, help="Address to bind (default: server.listen of the spec).")
@click.option("--port", default=None, type=click.IntRange(0, 65535), help="Port to bind (default: server.listen of the spec).")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Worker processes sharing the port via SO_REUSEPORT (default: server.workers).")
@click.option("--worker", is_flag=True, hidden=True, help="Internal: run as one worker of a supervisor.")
def serve(spec: str, host: str | None, port: int | None, workers: int | None, worker: bool) -> None:
    """Serve the OpenAI-compatible router for SPEC."""
    path = Path(spec)
    try:
        table = build_table(path, os.environ).table
    except ConfigError as e:
        for d in e.diagnostics:
            click.echo(str(d), err=True)
        sys.exit(1)
    index = os.environ.get("IIR_WORKER_INDEX")
    configure_logging(table.server, worker=int(index) if worker and index and index.isdigit() else None,
                      secrets=collect_secrets(table, os.environ))
    host = host if host is not None else table.server.host
    port = port if port is not None else table.server.port
    n = workers if workers is not None else table.server.workers
    if n > 1 and not worker:
        if port == 0:
            raise click.UsageError("--workers > 1 needs a fixed --port (workers share it via SO_REUSEPORT)")
        from iir.server import metrics_api
        from iir.server.workers import supervise

        _port_free_or_exit(host, port)
        with metrics_api.multiprocess_dir_for_workers():
            status = supervise(path, host, port, n, table.server.drain_timeout, on_exit=metrics_api.worker_exited)
        sys.exit(status)
    from iir.server.run import serve_forever

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run  # type: ignore[assignment]
    try:
        sys.exit(runner(serve_forever(path, host=host, port=port, reuse_port=worker, workers=n)))
    except OSError as e:  # at start-up: the address is taken, not available or not allowed
        _cannot_listen(host, port, e)


commands = [serve]
