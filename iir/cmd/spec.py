"""Spec commands: validate (more added by the foundation work)."""

from __future__ import annotations

import os
import sys

import click

from iir.compile.build import build_table
from iir.errors import ConfigError

__all__ = ["commands"]


@click.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
def validate(files: tuple[str, ...]) -> None:
    """Validate spec FILES (default iir.yaml): exit 0 when clean, 1 on errors."""
    failed = False
    for f in files or ("iir.yaml",):
        try:
            built = build_table(f, os.environ)
        except ConfigError as e:
            failed = True
            for d in e.diagnostics:
                click.echo(str(d), err=True)
            continue
        for w in built.warnings:
            click.echo(str(w), err=True)
        click.echo(f"{f}: ok ({built.table.digest[:12]})")
    sys.exit(1 if failed else 0)


commands = [validate]
