"""``iir export``: deployment files derived from the spec (Ansible, Helm, Compose)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from iir.cmd import CONTEXT_SETTINGS
from iir.compile.build import Built, build_table
from iir.errors import ConfigError
from iir.export import CHARTS, compose_env, helm_values, inventory, inventory_host, inventory_list
from iir.spec.load import placeholders_in, unset_env_warnings

__all__ = ["commands"]

_SPEC_HELP = "Spec file (default: $IIR_SPEC, else iir.yaml)."
_OUTPUT_HELP = "Write to FILE (atomically) instead of stdout."


def _spec_path(spec: str | None) -> str:
    return spec or os.environ.get("IIR_SPEC") or "iir.yaml"


def _build(spec: str | None) -> Built:
    """Load leniently: exports name secrets by their variable and never need their values."""
    try:
        built = build_table(_spec_path(spec), os.environ, "lenient")
    except ConfigError as e:
        for d in e.diagnostics:
            click.echo(str(d), err=True)
        sys.exit(1)
    for d in unset_env_warnings(built.warnings):
        click.echo(str(d), err=True)
    return built


def _emit(text: str, output: str | None) -> None:
    # An undefined variable's placeholder must never be deployed: refuse when the output needs its value.
    needed = placeholders_in(text)
    if needed:
        click.echo(f"cannot export: the output needs the value of {', '.join(needed)}, which is not set "
                   "(set it, or give it a ${VAR:-default} in the spec)", err=True)
        sys.exit(1)
    if output is None:
        click.echo(text, nl=False)
        return
    path = Path(output)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _fail(e: ConfigError) -> None:
    for d in e.diagnostics:
        click.echo(str(d), err=True)
    sys.exit(1)


@click.group(context_settings=dict(CONTEXT_SETTINGS))
def export() -> None:
    """Deployment files derived from the spec: Ansible inventory, Helm values, Compose env.

    Secret values are never written: secrets are named by the environment variable the spec
    reads them from. The spec is loaded with the current environment, but production secrets
    need not be set: an undefined ${VAR} is a warning, and only an output that would need its
    value (e.g. an agent host written as ${VAR}) is refused.
    """


@export.command("inventory")
@click.option("--spec", "spec", type=click.Path(dir_okay=False), help=_SPEC_HELP)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help=_OUTPUT_HELP)
@click.option("--list", "as_list", is_flag=True, help="Dynamic-inventory JSON (for `ansible -i <script>`).")
@click.option("--host", "host", metavar="NAME", help="Dynamic-inventory variables of one host (JSON).")
def inventory_cmd(spec: str | None, output: str | None, as_list: bool, host: str | None) -> None:
    """The Ansible inventory: router host, agent hosts (kind: agent), llm-d clusters.

    Without options, a static YAML inventory. With --list or --host NAME it speaks Ansible's
    dynamic-inventory protocol, so ansible/inventory/iir.sh can call it directly.
    """
    built = _build(spec)
    try:
        if host is not None:
            text = inventory_host(built, os.environ, host)
        elif as_list:
            text = inventory_list(built, os.environ)
        else:
            text = inventory(built, os.environ)
    except ConfigError as e:
        _fail(e)
    _emit(text, output)


@export.command("helm-values")
@click.option("--spec", "spec", type=click.Path(dir_okay=False), help=_SPEC_HELP)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help=_OUTPUT_HELP)
@click.option("--chart", type=click.Choice(CHARTS), default="iir-router", show_default=True,
              help="Which chart under helm/ the values are for.")
@click.option("--backend", metavar="NAME", help="With --chart llm-d: the llm-d backend (when the spec has several).")
def helm_values_cmd(spec: str | None, output: str | None, chart: str, backend: str | None) -> None:
    """Helm values for helm/iir-router (the spec itself, Redis, env, secrets by name) or helm/llm-d."""
    built = _build(spec)
    try:
        text = helm_values(built, chart, backend)
    except ConfigError as e:
        _fail(e)
    _emit(text, output)


@export.command("compose-env")
@click.option("--spec", "spec", type=click.Path(dir_okay=False), help=_SPEC_HELP)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help=_OUTPUT_HELP)
def compose_env_cmd(spec: str | None, output: str | None) -> None:
    """The .env file for docker-compose.yml: variables the spec reads, secrets left empty."""
    _emit(compose_env(_build(spec)), output)


commands = [export]
