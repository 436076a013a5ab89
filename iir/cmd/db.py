"""``iir db migrate|seed|snapshots``: the SQLite registry (``$SQLITE_DB_PATH``, default ``iir.db``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from iir.cmd import CONTEXT_SETTINGS
from iir.cmd.spec import echo_diagnostics
from iir.compile.build import build_table
from iir.errors import ConfigError

__all__ = ["commands"]

DB_OPTION = click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
                         help="Registry file (default: $SQLITE_DB_PATH, else iir.db).")


def _db(db_path: str | None) -> str:
    return db_path or os.environ.get("SQLITE_DB_PATH") or "iir.db"


@click.group(context_settings=dict(CONTEXT_SETTINGS))
def db() -> None:
    """Manage the SQLite registry of compiled snapshots and registered agents."""


@db.command()
@DB_OPTION
def migrate(db_path: str | None) -> None:
    """Create the registry or bring its schema up to date (sqlite-utils migrations)."""
    from iir.compile.registry import Registry, RegistryError  # sqlite-utils: imported only when needed

    path = _db(db_path)
    try:
        with Registry(path, migrate=False) as reg:
            applied = reg.migrate()
            total = reg.applied_migrations()
    except RegistryError as e:
        click.echo(str(e), err=True)
        sys.exit(1)
    if applied:
        click.echo(f"{path}: applied {', '.join(applied)}")
    else:
        click.echo(f"{path}: up to date ({len(total)} migrations)")


@db.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@DB_OPTION
def seed(files: tuple[str, ...], db_path: str | None) -> None:
    """Compile each spec FILE into the registry, in order; the last valid one is the active
    snapshot. Exit 1 if any file is invalid (the others are still stored)."""
    from iir.compile.registry import Registry, RegistryError  # sqlite-utils: imported only when needed

    path = _db(db_path)
    failed = False
    valid = []
    for f in files:  # everything is checked before the registry is opened: no file when none is valid
        try:
            valid.append((f, build_table(f, os.environ)))
        except ConfigError as e:
            failed = True
            echo_diagnostics(e.diagnostics)
    if not valid:
        sys.exit(1)
    try:
        with Registry(path) as reg:
            for f, built in valid:
                snap = reg.persist(built.table, built.loaded.text, f)
                click.echo(f"{f}: snapshot {snap} ({built.table.digest[:12]})")
    except RegistryError as e:
        click.echo(str(e), err=True)
        sys.exit(1)
    sys.exit(1 if failed else 0)


@db.command()
@DB_OPTION
def snapshots(db_path: str | None) -> None:
    """List the stored snapshots, newest first (* marks the active one)."""
    from iir.compile.registry import Registry, RegistryError  # sqlite-utils: imported only when needed

    path = _db(db_path)
    if not Path(path).exists():  # a listing creates nothing (as `iir agents list`)
        click.echo(f"no snapshots: there is no registry at {path} (`iir compile` creates it)")
        return
    try:
        with Registry(path) as reg:
            for s in reg.snapshots():
                click.echo(f"{'*' if s.active else ' '} {s.id:>4}  {s.created_at}  {s.digest[:12]}  {s.source_path}")
    except RegistryError as e:
        click.echo(str(e), err=True)
        sys.exit(1)


commands = [db]
