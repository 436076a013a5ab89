"""The live routing table of one router process, and all-or-nothing reload.

``TableState.table`` is read once per request (the request pins it); :meth:`TableState.reload`
builds a new table aside (load → check → compile → persist) and swaps one reference. On any
failure the old table stays, and the diagnostics are logged with ``file:line:col`` and kept
for ``/admin/``; the ``on_report`` hooks (installed by :mod:`iir.server.metrics_api`) log every
reload as one structured event with each diagnostic and count it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from iir.compile.build import Built, build_table
from iir.compile.registry import Registry, RegistryError
from iir.errors import ConfigError, Diagnostic
from iir.spec.models import Server as ServerSpec
from iir.table import RoutingTable

__all__ = ["TABLE_STATE", "ReloadReport", "TableState", "build_and_persist"]

#: Called after every reload attempt with its report (metrics, the structured ``reload`` log event).
OnReport = Callable[["ReloadReport"], None]


def build_and_persist(path: Path, env: Mapping[str, str], *, persist: bool = True) -> Built:
    """load → check → compile → persist (one SQLite transaction). Blocking: run it in a thread.
    Raises :class:`ConfigError` (also for a registry that cannot be written)."""
    built = build_table(path, env)
    if persist:
        table = built.table
        try:
            with Registry(table.state.registry) as reg:
                reg.persist(table, built.loaded.text, str(path))
        except RegistryError as e:
            raise ConfigError([Diagnostic(str(path), 1, 1, "state.registry",
                                          f"cannot persist to registry {table.state.registry!r}: {e}")]) from None
    return built


@dataclass(frozen=True, slots=True)
class ReloadReport:
    ok: bool
    trigger: str  # startup | watch | sighup | admin
    at: float  # wall-clock time
    seconds: float
    digest: str  # the digest in force after this reload
    changed: bool
    diagnostics: tuple[Diagnostic, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "trigger": self.trigger, "at": self.at, "seconds": round(self.seconds, 4),
                "digest": self.digest, "changed": self.changed,
                "diagnostics": [d.to_dict() | {"text": str(d)} for d in self.diagnostics]}


#: server.* settings fixed when the listener starts; a reload reports a change as a warning.
_RESTART_ONLY = ("listen", "workers", "drain_timeout")


@dataclass
class TableState:
    """One process's current build plus reload bookkeeping (stored on the app)."""

    path: Path
    built: Built
    env: Callable[[], Mapping[str, str]] = lambda: dict(os.environ)
    loaded_at: float = field(default_factory=time.time)
    last: ReloadReport | None = None
    persist: bool = True
    on_report: list[OnReport] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _started: ServerSpec = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._started = self.built.loaded.spec.server  # what the listener was started with

    @property
    def table(self) -> RoutingTable:
        return self.built.table

    def _restart_only(self, built: Built) -> tuple[Diagnostic, ...]:
        """Warnings for server settings a reload cannot apply (the listener is already running)."""
        new = built.loaded.spec.server
        out = []
        for name in _RESTART_ONLY:
            before, after = getattr(self._started, name), getattr(new, name)
            if before != after:
                out.append(built.loaded.source_map.diag(
                    ("server", name), f"changed from {before!r} to {after!r}: takes effect when the router "
                    f"restarts (this process keeps {before!r})", severity="warning"))
        return tuple(out)

    async def reload(self, trigger: str) -> ReloadReport:
        """Rebuild from the spec file; swap only if it is valid and different."""
        async with self._lock:
            start = time.perf_counter()
            old = self.built.table.digest
            try:
                built = await asyncio.to_thread(build_and_persist, self.path, self.env(), persist=self.persist)
            except ConfigError as e:
                report = ReloadReport(False, trigger, time.time(), time.perf_counter() - start, old, False,
                                      tuple(e.diagnostics))
            else:
                changed = built.table.digest != old
                if changed:
                    self.built, self.loaded_at = built, time.time()  # the swap: one reference
                report = ReloadReport(True, trigger, time.time(), time.perf_counter() - start,
                                      built.table.digest, changed, (*built.warnings, *self._restart_only(built)))
            self.last = report
            for hook in self.on_report:
                hook(report)
            return report


TABLE_STATE = web.AppKey("iir.table_state", TableState)
