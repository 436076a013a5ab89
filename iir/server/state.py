"""The live routing table of one router process, and all-or-nothing reload.

``TableState.table`` is read once per request (the request pins it); :meth:`TableState.reload`
builds a new table aside (load → check → compile → persist) and swaps one reference. On any
failure the old table stays, and the diagnostics are logged with ``file:line:col`` and kept
for ``/admin/``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from iir.compile.build import Built, build_table
from iir.errors import ConfigError, Diagnostic
from iir.table import RoutingTable

__all__ = ["TABLE_STATE", "ReloadReport", "TableState"]

log = logging.getLogger("iir.reload")

#: Called after a successful swap with the new build (persist to the registry, reconfigure, ...).
OnSwap = Callable[[Built], None]


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


@dataclass
class TableState:
    """One process's current build plus reload bookkeeping (stored on the app)."""

    path: Path
    built: Built
    env: Callable[[], Mapping[str, str]] = lambda: dict(os.environ)
    loaded_at: float = field(default_factory=time.time)
    last: ReloadReport | None = None
    on_swap: list[OnSwap] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def table(self) -> RoutingTable:
        return self.built.table

    async def reload(self, trigger: str) -> ReloadReport:
        """Rebuild from the spec file; swap only if it is valid and different."""
        async with self._lock:
            start = time.perf_counter()
            old = self.built.table.digest
            try:
                built = await asyncio.to_thread(build_table, self.path, self.env())
            except ConfigError as e:
                report = ReloadReport(False, trigger, time.time(), time.perf_counter() - start, old, False,
                                      tuple(e.diagnostics))
                log.error("reload (%s) rejected, keeping spec %s: %d problem(s)", trigger, old[:12],
                          sum(d.severity == "error" for d in e.diagnostics))
                for d in e.diagnostics:
                    log.error("  %s", d)
            else:
                changed = built.table.digest != old
                if changed:
                    for hook in self.on_swap:
                        hook(built)  # persist etc.: runs before the swap, so a failure keeps the old table
                    self.built, self.loaded_at = built, time.time()
                report = ReloadReport(True, trigger, time.time(), time.perf_counter() - start,
                                      built.table.digest, changed, built.warnings)
                log.info("reload (%s) %s in %.1f ms: spec %s", trigger, "applied" if changed else "unchanged",
                         report.seconds * 1000, built.table.digest[:12])
                for w in built.warnings:
                    log.warning("  %s", w)
            self.last = report
            return report


TABLE_STATE = web.AppKey("iir.table_state", TableState)
