"""The SQLite registry: compiled spec snapshots, the active snapshot's rows, registered agents.

One file (``SQLITE_DB_PATH``, default ``table.state.registry``), opened in WAL mode so a router
and the CLI can share it. The schema is versioned with sqlite-utils ``Migrations``
(``iir db migrate``); opening a :class:`Registry` applies pending migrations.

Tables:

- ``snapshots``: one row per persisted spec: ``digest``, ``source_path``, ``source_text``,
  ``compiled`` (``table_to_dict(secrets="omit")`` as JSON: secrets are never stored),
  ``created_at`` (ISO-8601 UTC) and ``active`` (exactly one row is 1 after a persist).
- ``backends``, ``models``, ``routes``: the rows of the active snapshot, replaced on each persist.
- ``agents``: dynamically registered agents (``id``, ``url``, ``models`` JSON,
  ``context_window``, ``capabilities`` JSON, ``registered_at`` and ``last_heartbeat`` as unix
  seconds, ``state``, ``load`` JSON), written by the router's agent API through the methods here.

:meth:`Registry.persist` writes a snapshot and its rows in ONE transaction: if anything fails
(or the process dies) midway, the previous snapshot stays the active one and no row changes.
"""

from __future__ import annotations

import datetime
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from iir.backends.credentials import redact_url
from iir.compile.compiler import table_to_dict
from iir.table import RoutingTable

# sqlite-utils imports numpy and pandas when they are installed, only to map their scalar types
# on insert (iir never inserts them): ~15 MB of RSS per router worker. Keep them out unless
# something already loaded them; they stay importable afterwards.
_BLOCKED = tuple(name for name in ("numpy", "pandas") if name not in sys.modules)
sys.modules.update(dict.fromkeys(_BLOCKED))  # type: ignore[arg-type]  # "import numpy" raises ImportError
try:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations
finally:
    for _blocked in _BLOCKED:
        if _blocked in sys.modules and sys.modules[_blocked] is None:
            del sys.modules[_blocked]

__all__ = ["AGENT_STATES", "MIGRATIONS", "AgentRecord", "Registry", "RegistryError", "Snapshot"]

AGENT_STATES = ("ready", "busy", "draining", "stale", "gone")
MIGRATIONS = Migrations("iir")


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    db.table("snapshots").create({"id": int, "digest": str, "source_path": str, "source_text": str,
                            "compiled": str, "created_at": str, "active": int}, pk="id")
    db.table("snapshots").create_index(["digest"])
    db.table("snapshots").create_index(["active"])
    db.table("backends").create({"snapshot_id": int, "name": str, "position": int, "kind": str, "protocol": str,
                           "base_url": str, "models": str, "context_window": int, "max_inflight": int,
                           "capabilities": str, "weight": float, "configured": int, "unconfigured_reason": str},
                          pk="name")
    db.table("models").create({"snapshot_id": int, "name": str, "backend": str, "upstream": str, "context_window": int,
                         "price_input": float, "price_output": float}, pk=("name", "backend"))
    db.table("routes").create({"snapshot_id": int, "position": int, "name": str, "match": str, "targets": str,
                         "by_model": int, "strategy": str, "cache": int, "limits": str}, pk="position")
    db.table("agents").create({"id": str, "url": str, "models": str, "context_window": int, "capabilities": str,
                         "registered_at": float, "last_heartbeat": float, "state": str, "load": str}, pk="id")


_OPEN_TIMEOUT = 10.0


def _contended(e: sqlite3.OperationalError) -> bool:
    """Another process holds the file, or applied the same migration a moment ago."""
    text = str(e)
    return "locked" in text or "busy" in text or "already exists" in text


class RegistryError(Exception):
    """The registry file cannot be opened or written (message is meant for the operator)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: int
    digest: str
    source_path: str
    created_at: str
    active: bool
    compiled: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AgentRecord:
    id: str
    url: str
    models: tuple[str, ...]
    context_window: int | None
    capabilities: tuple[str, ...]
    registered_at: float
    last_heartbeat: float
    state: str
    load: Mapping[str, Any]


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _agent(row: Mapping[str, Any]) -> AgentRecord:
    return AgentRecord(
        id=row["id"], url=row["url"], models=tuple(orjson.loads(row["models"] or "[]")),
        context_window=row["context_window"], capabilities=tuple(orjson.loads(row["capabilities"] or "[]")),
        registered_at=row["registered_at"], last_heartbeat=row["last_heartbeat"], state=row["state"],
        load=orjson.loads(row["load"] or "{}"),
    )


class Registry:
    """A handle on the registry file. Not shared between threads; open one per process/task.

    ``Registry(path)`` opens (creating if needed) and migrates. Use as a context manager or
    call :meth:`close`."""

    def __init__(self, path: str | Path, *, migrate: bool = True) -> None:
        self.path = str(path)
        # Several processes may open (and create, and migrate) the same file at once: router
        # workers, `iir compile`. Switching to WAL and a migration racing another process's
        # fail fast rather than wait, so those are retried until the other one is done.
        deadline = time.monotonic() + _OPEN_TIMEOUT
        while True:
            try:
                self._open(migrate)
                return
            except sqlite3.OperationalError as e:
                if hasattr(self, "db"):
                    self.db.close()
                if not _contended(e) or time.monotonic() > deadline:
                    raise RegistryError(f"cannot open registry {self.path}: {e}") from None
                time.sleep(random.uniform(0.02, 0.1))
            except (sqlite3.Error, OSError) as e:
                raise RegistryError(f"cannot open registry {self.path}: {e}") from None

    def _open(self, migrate: bool) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = Database(sqlite3.connect(self.path, timeout=_OPEN_TIMEOUT, check_same_thread=False))
        if self.path != ":memory:":
            self.db.enable_wal()
        self.db.execute(f"PRAGMA busy_timeout = {int(_OPEN_TIMEOUT * 1000)}")
        self.db.execute("PRAGMA foreign_keys = ON")
        if migrate:
            self.migrate()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # -- schema -----------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply pending migrations; returns the names applied (empty when up to date)."""
        pending = [mg.name for mg in MIGRATIONS.pending(self.db)]
        MIGRATIONS.apply(self.db)
        return pending

    def applied_migrations(self) -> list[str]:
        return [mg.name for mg in MIGRATIONS.applied(self.db)]

    # -- snapshots --------------------------------------------------------------------------
    def persist(self, table: RoutingTable, source_text: str, source_path: str | None = None, *,
                keep: int = 100, _step: Callable[[str], None] | None = None) -> int:
        """Store ``table`` as the active snapshot, in one transaction; returns its id.

        If the active snapshot already has the same digest nothing is written. ``keep`` bounds
        how many snapshots are retained. ``_step`` is a test seam called between writes."""
        step = _step or (lambda _name: None)
        current = self.active_snapshot()
        if current is not None and current.digest == table.digest:
            return current.id
        compiled = table_to_dict(table, secrets="omit")
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        try:
            with self.db.atomic():
                self.db.execute("UPDATE snapshots SET active = 0 WHERE active = 1")
                step("deactivated")
                row_id = self.db.table("snapshots").insert({
                    "digest": table.digest, "source_path": source_path or table.source, "source_text": source_text,
                    "compiled": _json(compiled), "created_at": now, "active": 1}).last_rowid
                assert row_id is not None
                snap_id = int(row_id)
                step("snapshot")
                self._replace_rows(snap_id, table, step)
                self.db.execute(
                    "DELETE FROM snapshots WHERE active = 0 AND id NOT IN "
                    "(SELECT id FROM snapshots ORDER BY id DESC LIMIT ?)", [keep])
                step("pruned")
        except sqlite3.Error as e:
            raise RegistryError(f"cannot write registry {self.path}: {e}") from None
        return snap_id

    def _replace_rows(self, snap_id: int, table: RoutingTable, step: Callable[[str], None]) -> None:
        for name in ("backends", "models", "routes"):
            self.db.execute(f"DELETE FROM {name}")
        self.db.table("backends").insert_all([
            {"snapshot_id": snap_id, "name": b.name, "position": i, "kind": b.kind, "protocol": b.protocol,
             "base_url": redact_url(b.base_url, "<set>"), "models": _json(list(b.models)),
             "context_window": b.context_window,
             "max_inflight": b.max_inflight, "capabilities": _json(sorted(b.capabilities)), "weight": b.weight,
             "configured": int(b.configured), "unconfigured_reason": b.unconfigured_reason}
            for i, b in enumerate(table.backends.values())])
        step("backends")
        self.db.table("models").insert_all([
            {"snapshot_id": snap_id, "name": model, "backend": b.name, "upstream": b.upstream_model(model),
             "context_window": b.context_window,
             "price_input": b.prices[model][0] if model in b.prices else None,
             "price_output": b.prices[model][1] if model in b.prices else None}
            for b in table.backends.values() for model in b.models])
        step("models")
        routes = table_to_dict(table, secrets="omit")["routes"]
        self.db.table("routes").insert_all([
            {"snapshot_id": snap_id, "position": i, "name": r["name"], "match": _json(r["match"]),
             "targets": _json(r["targets"]), "by_model": int(r["by_model"]), "strategy": r["strategy"],
             "cache": int(r["cache"]), "limits": _json(r["limits"])}
            for i, r in enumerate(routes)])
        step("routes")

    def _snapshot(self, row: Mapping[str, Any]) -> Snapshot:
        return Snapshot(row["id"], row["digest"], row["source_path"], row["created_at"], bool(row["active"]),
                        orjson.loads(row["compiled"]))

    def active_snapshot(self) -> Snapshot | None:
        rows = list(self.db.table("snapshots").rows_where("active = 1", order_by="id desc", limit=1))
        return self._snapshot(rows[0]) if rows else None

    def snapshots(self) -> list[Snapshot]:
        """All retained snapshots, newest first."""
        return [self._snapshot(r) for r in self.db.table("snapshots").rows_where(order_by="id desc")]

    def source_of(self, snapshot_id: int) -> str | None:
        rows = list(self.db.table("snapshots").rows_where("id = ?", [snapshot_id], select="source_text"))
        return rows[0]["source_text"] if rows else None

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Rows of ``backends``, ``models`` or ``routes`` (the active snapshot)."""
        if table not in ("backends", "models", "routes"):
            raise ValueError(f"not a registry row table: {table}")
        order = {"backends": "position", "models": "backend, name", "routes": "position"}[table]
        return list(self.db.table(table).rows_where(order_by=order))

    # -- agents -----------------------------------------------------------------------------
    def upsert_agent(self, agent_id: str, url: str, models: Iterable[str], *, context_window: int | None = None,
                     capabilities: Iterable[str] = (), state: str = "ready", load: Mapping[str, Any] | None = None,
                     now: float | None = None) -> AgentRecord:
        """Register (or re-register) an agent; keeps ``registered_at`` of an existing row."""
        _check_state(state)
        at = time.time() if now is None else now
        with self.db.atomic():
            existing = self.get_agent(agent_id)
            self.db.table("agents").upsert({
                "id": agent_id, "url": url, "models": _json(list(models)), "context_window": context_window,
                "capabilities": _json(sorted(set(capabilities))),
                "registered_at": existing.registered_at if existing else at, "last_heartbeat": at,
                "state": state, "load": _json(dict(load or {}))}, pk="id")
        record = self.get_agent(agent_id)
        assert record is not None
        return record

    def heartbeat(self, agent_id: str, *, load: Mapping[str, Any] | None = None, state: str | None = None,
                  now: float | None = None) -> bool:
        """Record a heartbeat (and optionally load/state). False when the agent is unknown."""
        updates: dict[str, Any] = {"last_heartbeat": time.time() if now is None else now}
        if load is not None:
            updates["load"] = _json(dict(load))
        if state is not None:
            _check_state(state)
            updates["state"] = state
        return self._update_agent(agent_id, updates)

    def set_agent_state(self, agent_id: str, state: str) -> bool:
        """Set an agent's state (one of :data:`AGENT_STATES`). False when the agent is unknown."""
        _check_state(state)
        return self._update_agent(agent_id, {"state": state})

    def _update_agent(self, agent_id: str, updates: dict[str, Any]) -> bool:
        sets = ", ".join(f"{k} = ?" for k in updates)
        with self.db.atomic():
            cur = self.db.execute(f"UPDATE agents SET {sets} WHERE id = ?", [*updates.values(), agent_id])
        return cur.rowcount > 0

    def remove_agent(self, agent_id: str) -> bool:
        with self.db.atomic():
            cur = self.db.execute("DELETE FROM agents WHERE id = ?", [agent_id])
        return cur.rowcount > 0

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        rows = list(self.db.table("agents").rows_where("id = ?", [agent_id]))
        return _agent(rows[0]) if rows else None

    def list_agents(self, *, state: str | None = None) -> list[AgentRecord]:
        """All agents (or those in ``state``), by id."""
        where, args = ("state = ?", [state]) if state else (None, [])
        return [_agent(r) for r in self.db.table("agents").rows_where(where, args, order_by="id")]


def _check_state(state: str) -> None:
    if state not in AGENT_STATES:
        raise ValueError(f"agent state must be one of {', '.join(AGENT_STATES)}, got {state!r}")
