"""The ``iir`` command. Each command group lives in its own module under :mod:`iir.cmd`."""

from __future__ import annotations

import sys

import click

from iir import __version__
from iir.cmd import CONTEXT_SETTINGS

__all__ = ["main"]


@click.group(context_settings=dict(CONTEXT_SETTINGS))
@click.version_option(__version__, prog_name="iir")
def cli() -> None:
    """iir — the Intelligent Inference Router.

    One OpenAI-compatible endpoint in front of local agents, vLLM, llm-d and cloud providers,
    driven by one declarative spec (iir.yaml).
    """


def _register() -> None:
    # One line per command module; each module exposes `commands: list[click.Command]`.
    from iir.cmd import agent as agent_cmds
    from iir.cmd import db as db_cmds
    from iir.cmd import export as export_cmds
    from iir.cmd import models as models_cmds
    from iir.cmd import serve as serve_cmds
    from iir.cmd import spec as spec_cmds

    for module in (spec_cmds, models_cmds, db_cmds, export_cmds, serve_cmds, agent_cmds):
        for command in module.commands:
            cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    _register()
    try:
        cli.main(args=argv, prog_name="iir", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
