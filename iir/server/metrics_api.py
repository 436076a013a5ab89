"""``GET /metrics`` in Prometheus text format, correct with one process or several workers.

One process: the application's own registry. Several workers (``iir serve --workers N``): the
parent enters :func:`multiprocess_dir` *before* any worker imports prometheus_client; every
worker then writes its metric values to mmap files in that directory and whichever worker
answers a scrape merges all of them, so totals cover every worker. The parent calls
:func:`worker_exited` when a worker dies (its live gauges go away) and removes the directory on
exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import multiprocess as prom_mp

from iir.observability.logging import flush_handlers, log_reload
from iir.observability.metrics import METRICS_KEY, Metrics, multiprocess_dir

if TYPE_CHECKING:  # the state module is only needed for annotations
    from iir.server.state import ReloadReport, TableState

__all__ = ["ENV_VAR", "metrics_handler", "multiprocess_dir_for_workers", "render", "setup", "worker_exited"]

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
RELOAD_LOGGER = "iir.reload"
LOG_FLUSH_INTERVAL = 0.25  # seconds


def render(metrics: Metrics) -> bytes:
    """The exposition text: this process's registry, or every worker's values merged."""
    path = multiprocess_dir()
    if not metrics.multiprocess or path is None:
        return generate_latest(metrics.registry)
    registry = CollectorRegistry()
    prom_mp.MultiProcessCollector(registry, path=path)
    registry.register(metrics.spec_collector)  # type: ignore[arg-type]
    return generate_latest(registry)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    if metrics.multiprocess:
        # Merging reads one file per worker and metric type: keep that off the event loop.
        body = await asyncio.to_thread(render, metrics)
    else:
        body = render(metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application, state: TableState | None = None, *, metrics: Metrics | None = None,
          path: str = "/metrics") -> Metrics:
    """Attach a :class:`Metrics` (a new one unless given) to ``app`` and serve it at ``path``.

    With the process's :class:`TableState`, the loaded spec is reported at once and every
    reload afterwards is counted, logged as one structured ``reload`` event, and updates
    ``iir_spec_info`` (through ``state.on_report``)."""
    if metrics is None:
        metrics = Metrics()
    app[METRICS_KEY] = metrics
    app.router.add_get(path, metrics_handler)
    app.cleanup_ctx.append(_flush_logs_periodically)
    if state is not None:
        metrics.on_spec_loaded(state.table, at=state.loaded_at)
        metrics.reload(True)
        state.on_report.append(_reload_reporter(state, metrics))
    return metrics


async def _flush_logs_periodically(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: buffered log lines reach stdout within LOG_FLUSH_INTERVAL even when idle."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_INTERVAL)
            flush_handlers()

    task = asyncio.create_task(loop(), name="iir-log-flush")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        flush_handlers()


def _reload_reporter(state: TableState, metrics: Metrics) -> Callable[[ReloadReport], None]:
    log = logging.getLogger(RELOAD_LOGGER)

    def report(r: ReloadReport) -> None:
        metrics.reload(r.ok)
        if r.ok and r.changed:
            metrics.on_spec_loaded(state.table, at=r.at)
        log_reload(log, ok=r.ok, seconds=r.seconds, spec=str(state.path), digest=r.digest if r.ok else None,
                   diagnostics=r.diagnostics, trigger=r.trigger)

    return report


@contextmanager
def multiprocess_dir_for_workers() -> Iterator[str]:
    """For the parent of ``--workers N``: a fresh directory in ``PROMETHEUS_MULTIPROC_DIR`` for the
    whole server run (inherited by the workers), removed with everything in it on exit.

    Enter it before the workers start, and before this process imports prometheus_client if the
    workers are forked rather than spawned.
    """
    previous = os.environ.get(ENV_VAR)
    path = tempfile.mkdtemp(prefix="iir-metrics-")
    os.environ[ENV_VAR] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous
        shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """A worker process ended: drop its live gauges (in-flight, health, agents) from the merge."""
    path = multiprocess_dir()
    if path is not None:
        prom_mp.mark_process_dead(pid, path)
