"""``iir models list|add|update|remove``: the admin CLI for the models in ``iir.yaml``.

Edits the spec file itself with ruamel round-trip (comments, order and formatting of untouched
parts are kept byte-for-byte), validates the result with the full config pipeline, and only
then replaces the file atomically. A file that does not load is not edited (its diagnostics are
printed, as by ``iir validate``); an invalid result is refused and the file is left alone. A
running router picks the change up through hot reload.

The spec is loaded leniently (see :mod:`iir.spec.load`): editing needs no production secret, an
undefined ``${VAR}`` is a warning, and the file keeps its ``${VAR}`` text (edits are textual).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from iir.cmd import CONTEXT_SETTINGS
from iir.cmd.spec import DEFAULT_SPEC, SPEC_ARG, build_or_exit, echo_diagnostics
from iir.compile.build import build_text
from iir.errors import ConfigError
from iir.spec.edit import SpecEditError, add_model, remove_model, update_model, write_atomically
from iir.spec.load import read_spec_text, unset_env_warnings

__all__ = ["commands"]

SPEC_OPTION = click.option("--spec", "spec_path", default=DEFAULT_SPEC, show_default=True, type=SPEC_ARG,
                           help="Spec file to read and edit.")


@click.group(context_settings=dict(CONTEXT_SETTINGS))
def models() -> None:
    """List and edit the models of iir.yaml (edits keep comments and formatting).

    Needs no production secret: an undefined ${VAR} is a warning (its backend is listed as
    unconfigured) and the file keeps its ${VAR} references as written."""


@models.command("list")
@SPEC_OPTION
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def list_models(spec_path: str, fmt: str) -> None:
    """List every model a backend declares: backend, kind, upstream name, context window, price."""
    table = build_or_exit(spec_path, "lenient").table
    rows: list[dict[str, Any]] = []
    for b in table.backends.values():
        for name in b.models:
            price = b.prices.get(name)
            rows.append({"model": name, "backend": b.name, "kind": b.kind, "upstream": b.upstream_model(name),
                         "context_window": b.context_window, "price": list(price) if price else None,
                         "configured": b.configured})
    if fmt == "json":
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"{'MODEL':<28} {'BACKEND':<16} {'KIND':<18} {'UPSTREAM':<28} {'CONTEXT':>8}  PRICE in/out $/M")
    for r in rows:
        shown = f"{r['price'][0]:g}/{r['price'][1]:g}" if r["price"] else "-"
        ctx = str(r["context_window"] or "-")
        flag = "" if r["configured"] else "  (unconfigured)"
        click.echo(f"{r['model']:<28} {r['backend']:<16} {r['kind']:<18} {r['upstream']:<28} {ctx:>8}  {shown}{flag}")


def _price(price_in: float | None, price_out: float | None) -> tuple[float, float] | None:
    if (price_in is None) != (price_out is None):
        raise click.UsageError("give both --price-input and --price-output")
    return None if price_in is None or price_out is None else (price_in, price_out)


def _apply(spec_path: str, edit: Callable[[str], str], done: str) -> None:
    """Edit, validate, write atomically; refuse (exit 1) on any problem."""
    path = Path(spec_path)
    try:
        text = read_spec_text(path)  # the loader's limits: size, binary, UTF-8
    except ConfigError as e:
        echo_diagnostics(e.diagnostics)
        sys.exit(1)
    try:  # edits start from a spec that loads: otherwise its own diagnostics, as `iir validate` prints them
        before = build_text(text, spec_path, os.environ, "lenient")
        echo_diagnostics(unset_env_warnings(before.warnings))
    except ConfigError as e:
        echo_diagnostics(e.diagnostics)
        sys.exit(1)
    try:
        new_text = edit(text)
    except SpecEditError as e:
        click.echo(f"{spec_path}: {e}", err=True)
        sys.exit(1)
    try:
        built = build_text(new_text, spec_path, os.environ, "lenient")
    except ConfigError as e:
        click.echo(f"{spec_path}: refusing to write an invalid spec; the edit would cause:", err=True)
        echo_diagnostics(e.diagnostics)
        sys.exit(1)
    if new_text == text:
        click.echo(f"{spec_path}: nothing to change")
        return
    try:
        if read_spec_text(path) != text:  # someone else saved it meanwhile: do not overwrite their change
            click.echo(f"{spec_path}: changed on disk while this edit was prepared; nothing written, run it again",
                       err=True)
            sys.exit(1)
        write_atomically(path, new_text)
    except ConfigError as e:
        echo_diagnostics(e.diagnostics)
        sys.exit(1)
    except OSError as e:
        click.echo(f"{spec_path}: cannot write: {e.strerror or e}", err=True)
        sys.exit(1)
    click.echo(f"{spec_path}: {done} (digest {built.table.digest[:12]})")


_PRICE_OPTIONS = [
    click.option("--price-input", type=float, default=None, help="Dollars per million prompt tokens."),
    click.option("--price-output", type=float, default=None, help="Dollars per million completion tokens."),
]


def _with_price(f: Any) -> Any:
    for opt in reversed(_PRICE_OPTIONS):
        f = opt(f)
    return f


@models.command("add")
@click.argument("model")
@click.option("--backend", "-b", required=True, help="Backend that serves it (created when --kind is given).")
@click.option("--upstream", help="Name sent upstream, when it differs from MODEL.")
@_with_price
@click.option("--kind", help="Create the backend with this kind (agent, vllm, llm-d, openai-compatible, openai, ...).")
@click.option("--url", help="URL of a backend created with --kind.")
@click.option("--context-window", type=int, default=None, help="Context window of a backend created with --kind.")
@SPEC_OPTION
def add(model: str, backend: str, upstream: str | None, price_input: float | None, price_output: float | None,
        kind: str | None, url: str | None, context_window: int | None, spec_path: str) -> None:
    """Add MODEL to a backend's models in the spec file."""
    price = _price(price_input, price_output)
    new_backend: dict[str, Any] | None = None
    if kind:
        new_backend = {"kind": kind}
        if url:
            new_backend["url"] = url
        if context_window:
            new_backend["context_window"] = context_window
    elif url or context_window:
        raise click.UsageError("--url and --context-window only apply when creating a backend with --kind")
    _apply(spec_path, lambda t: add_model(t, model, backend=backend, upstream=upstream, price=price,
                                          new_backend=new_backend), f"added {model!r} to backend {backend!r}")


@models.command("update")
@click.argument("model")
@click.option("--backend", "-b", help="Only this backend (default: every backend serving MODEL).")
@click.option("--rename", help="New client-facing name (route conditions and key allow-lists follow).")
@click.option("--upstream", help="Name sent upstream (MODEL itself removes the mapping).")
@_with_price
@SPEC_OPTION
def update(model: str, backend: str | None, rename: str | None, upstream: str | None,
           price_input: float | None, price_output: float | None, spec_path: str) -> None:
    """Rename MODEL or change its upstream name or price."""
    price = _price(price_input, price_output)
    if not (rename or upstream or price):
        raise click.UsageError("nothing to update: give --rename, --upstream or --price-input/--price-output")
    _apply(spec_path, lambda t: update_model(t, model, backend=backend, rename=rename, upstream=upstream, price=price),
           f"updated {model!r}")


@models.command("remove")
@click.argument("model")
@click.option("--backend", "-b", help="Only from this backend (default: every backend serving MODEL).")
@SPEC_OPTION
def remove(model: str, backend: str | None, spec_path: str) -> None:
    """Remove MODEL (with its price and upstream mapping) from the spec file."""
    _apply(spec_path, lambda t: remove_model(t, model, backend=backend), f"removed {model!r}")


commands = [models]
