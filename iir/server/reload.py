"""Reload triggers: a watchfiles watcher on the spec file, and SIGHUP.

Both call :meth:`iir.server.state.TableState.reload`; so does ``POST /admin/reload``. Each
worker process runs its own watcher, so every worker reloads on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import watchfiles
from aiohttp import web

from iir.server.state import TABLE_STATE, TableState

__all__ = ["sighup_reload", "watch_spec", "watcher_ctx"]

log = logging.getLogger("iir.reload")


def _spec_filter(path: Path):
    name = path.name

    def accept(change: watchfiles.Change, changed: str) -> bool:
        p = Path(changed)
        # editors write via rename, Kubernetes ConfigMaps swap a `..data` symlink
        return p.name == name or p.name == "..data"

    return accept


async def watch_spec(state: TableState, stop: asyncio.Event) -> None:
    """Reload whenever the spec file changes, until ``stop`` is set."""
    directory = state.path.resolve().parent
    async for _changes in watchfiles.awatch(directory, watch_filter=_spec_filter(state.path), stop_event=stop,
                                           debounce=50, step=20, recursive=False,
                                           ignore_permission_denied=True):
        if state.path.exists():
            await state.reload("watch")
        else:  # deleted (or mid-rename): keep serving, and say so rather than stay silent
            log.warning("spec file %s is gone; still serving spec %s until it is back", state.path,
                        state.table.digest[:12])


async def watcher_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run the spec watcher for the app's lifetime."""
    stop = asyncio.Event()
    task = asyncio.create_task(watch_spec(app[TABLE_STATE], stop), name="iir-spec-watcher")
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def sighup_reload(state: TableState, tasks: set[asyncio.Task[object]]) -> None:
    """Install a SIGHUP handler that reloads the spec (keeps task references in ``tasks``)."""

    def on_hup() -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(state.reload("sighup"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    with contextlib.suppress(NotImplementedError, AttributeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
