"""Spec commands: ``iir validate``, ``iir compile``, ``iir schema``, ``iir explain``.

They run the same config pipeline as ``iir serve`` (:func:`iir.compile.build.build_table`).
Config problems are printed as one-line diagnostics and exit 1; no traceback reaches the user.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from iir.compile.build import Built, build_table
from iir.errors import ConfigError, Diagnostic
from iir.plugins.matching import AGENTS_TARGET, CandidateVerdict, candidates, features_from_body, match_route
from iir.plugins.selection import NoHealth, SelectionRequest, filter_allowed_by_key
from iir.spec.diagnose import did_you_mean
from iir.spec.load import EnvMode
from iir.spec.schema import spec_json_schema_text, spec_markdown
from iir.table import ClientKey, Route, RoutingTable, compile_globs

__all__ = ["DEFAULT_SPEC", "SPEC_ARG", "build_or_exit", "commands", "count_prompt_tokens", "echo_diagnostics"]

DEFAULT_SPEC = "iir.yaml"
SPEC_ARG = click.Path(dir_okay=True, path_type=str)


def echo_diagnostics(diags: list[Diagnostic] | tuple[Diagnostic, ...]) -> None:
    for d in diags:
        click.echo(str(d), err=True)


def build_or_exit(path: str, missing_env: EnvMode = "strict") -> Built:
    """Build or exit 1 with the diagnostics on stderr (warnings too, when it builds).
    ``missing_env="lenient"`` for offline tools: see :mod:`iir.spec.load`."""
    try:
        built = build_table(path, os.environ, missing_env)
    except ConfigError as e:
        echo_diagnostics(e.diagnostics)
        sys.exit(1)
    echo_diagnostics(built.warnings)
    return built


def _annotation(d: Diagnostic) -> str:
    level = "error" if d.severity == "error" else "warning"
    msg = f"{d.path}: {d.message}" if d.path else d.message
    msg = msg.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{level} file={d.file},line={d.line},col={d.col}::{msg}"


@click.command()
@click.argument("files", nargs=-1, type=SPEC_ARG)
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="text: one `file:line:col path: message` per line on stderr; json: one report on stdout; "
                   "github: GitHub Actions annotations on stdout.")
@click.option("--allow-missing-env", is_flag=True,
              help="An undefined ${VAR} without default is a warning, not an error (CI on a machine without "
                   "the production secrets). Without it, validate is as strict as `iir serve`.")
def validate(files: tuple[str, ...], fmt: str, allow_missing_env: bool) -> None:
    """Check spec FILES (default iir.yaml) without serving: the same load, check and compile as
    `iir serve`. Exit 0 when every file is valid (warnings allowed), 1 on any error.

    By default an environment variable the spec needs (${VAR} without a default) must be set, as
    on the machine that serves it; --allow-missing-env checks everything else where it is not."""
    failed = False
    report: list[dict[str, Any]] = []
    for f in files or (DEFAULT_SPEC,):
        digest: str | None = None
        try:
            built = build_table(f, os.environ, "lenient" if allow_missing_env else "strict")
            diags = list(built.warnings)
            digest = built.table.digest
        except ConfigError as e:
            failed = True
            diags = list(e.diagnostics)
        report.append({"file": f, "ok": digest is not None, "digest": digest,
                       "diagnostics": [d.to_dict() for d in diags]})
        if fmt == "text":
            echo_diagnostics(diags)
            if digest is not None:
                click.echo(f"{f}: ok ({digest[:12]})")
        elif fmt == "github":
            for d in diags:
                click.echo(_annotation(d))
    if fmt == "json":
        errors = sum(1 for r in report for d in r["diagnostics"] if d["severity"] == "error")
        warnings = sum(1 for r in report for d in r["diagnostics"] if d["severity"] != "error")
        click.echo(orjson.dumps({"ok": not failed, "errors": errors, "warnings": warnings, "files": report},
                                option=orjson.OPT_INDENT_2).decode())
    sys.exit(1 if failed else 0)


@click.command("compile")
@click.argument("file", required=False, default=DEFAULT_SPEC, type=SPEC_ARG)
@click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
              help="Registry file (default: $SQLITE_DB_PATH, else state.registry of the spec).")
def compile_cmd(file: str, db_path: str | None) -> None:
    """Validate and compile FILE (default iir.yaml) and store it as the active snapshot of the
    SQLite registry, in one transaction. Prints what was compiled."""
    from iir.compile.registry import Registry, RegistryError  # sqlite-utils: imported only when needed

    built = build_or_exit(file)
    table = built.table
    path = db_path or table.state.registry
    try:
        with Registry(path) as reg:
            snap = reg.persist(table, built.loaded.text, file)
    except RegistryError as e:
        click.echo(f"{path}: {e}", err=True)
        sys.exit(1)
    models = sum(len(b.models) for b in table.backends.values())
    click.echo(f"{file}: {len(table.backends)} backends, {models} models, {len(table.routes)} routes")
    click.echo(f"digest {table.digest}")
    click.echo(f"registry {path}: snapshot {snap} active")


@click.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write to this file (atomically) instead of stdout.")
@click.option("--markdown", is_flag=True, help="The Markdown field reference (docs/reference/spec.md) instead of the JSON Schema.")
@click.option("--check", is_flag=True, help="Do not write: exit 1 if --output differs from what would be generated.")
def schema(output: str | None, markdown: bool, check: bool) -> None:
    """Print the JSON Schema of iir.yaml (shipped as config/iir.schema.json, which editors use
    through the yaml-language-server modeline), or with --markdown the field reference."""
    text = spec_markdown() if markdown else spec_json_schema_text()
    if output is None:
        if check:
            raise click.UsageError("--check needs --output FILE")
        click.echo(text, nl=False)
        return
    target = Path(output)
    if check:
        current = target.read_text(encoding="utf-8") if target.is_file() else None
        if current != text:
            click.echo(f"{output} is out of date; run `iir schema{' --markdown' if markdown else ''} -o {output}`", err=True)
            sys.exit(1)
        click.echo(f"{output}: up to date")
        return
    from iir.spec.edit import write_atomically

    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, text)
    click.echo(f"wrote {output}")


def count_prompt_tokens(body: dict[str, Any], model: str) -> int:
    """Prompt tokens of a request body, counted the way the router counts them."""
    from iir.policies.tokens import TokenCounter

    return TokenCounter().count_request(body, "chat", model)


def _parse_headers(pairs: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--header")
        headers[name.strip().lower()] = value
    return headers


def _request_body(model: str | None, prompt: str | None, request: str | None, tools: bool, images: bool,
                  max_body: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if request is not None:
        try:
            size = Path(request).stat().st_size
            if max_body is not None and size > max_body:  # what the router answers, without reading it all
                raise click.BadParameter(f"{request} is {size} bytes; server.max_body is {max_body} bytes, so the "
                                         "router answers 413 request_too_large", param_hint="--request")
            loaded = orjson.loads(Path(request).read_bytes())
        except OSError as e:
            raise click.BadParameter(f"cannot read {request}: {e.strerror or e}", param_hint="--request") from None
        except orjson.JSONDecodeError as e:
            raise click.BadParameter(f"{request} is not JSON: {e}", param_hint="--request") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter(f"{request} must hold a JSON object (a chat request body)", param_hint="--request")
        body = loaded
    if prompt is not None:
        body["messages"] = [{"role": "user", "content": prompt}]
    if model is not None:
        body["model"] = model
    if not isinstance(body.get("model"), str):
        raise click.UsageError("give --model (or a request body with a `model`)")
    if tools and not body.get("tools"):
        body["tools"] = [{"type": "function", "function": {"name": "example", "parameters": {"type": "object"}}}]
    if images:
        body.setdefault("messages", []).append(
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}]})
    return body


def _semantic_matcher(table: RoutingTable) -> Callable[[Route, str], bool] | None:
    """The router's own semantic matcher (the local embedding model), only for a spec with a
    semantic rule; if the model cannot load, the rule does not match and stderr says why."""
    if not any(r.match.semantic_examples for r in table.routes):
        return None
    from iir.plugins.semantic import SemanticMatcher

    sem = SemanticMatcher()
    if not sem.available:
        click.echo(sem.unavailable_reason, err=True)
        return None
    return sem.matcher()


def _client_key(built: Built, name: str | None) -> ClientKey | None:
    """The configured key called ``name``; a usage error naming the problem otherwise."""
    if name is None:
        return None
    keys = {k.name: k for k in built.table.auth.keys_by_sha256.values()}
    if name in keys:
        return keys[name]
    declared = [k.name for k in built.loaded.spec.auth.keys]
    unset = {path for path, _ in built.loaded.unset_env}
    for i, k in enumerate(built.loaded.spec.auth.keys):
        if k.name == name and ("auth", "keys", i, "key") in unset:  # offline: its variable is not set here
            return ClientKey(k.name, tuple(k.models), None if "*" in k.models else compile_globs(tuple(k.models)),
                             tuple(k.limits))
    if name in declared:
        raise click.BadParameter(f"client key {name!r} is disabled: its value is empty (set its variable)",
                                 param_hint="--key")
    hint = did_you_mean(name, declared) if declared else " (the spec declares no client keys)"
    raise click.BadParameter(f"unknown client key {name!r}{hint}", param_hint="--key")


_KEY_REASON = "allowed-by-key: "  # as iir.pipeline.select.KEY_FILTER
_CONTEXT_REASON = "prompt ("  # iir.plugins.matching's context-window verdict
# iir.plugins.matching's verdicts for what the request is (the router answers 400 when all are)
_REQUEST_BOUND = (_CONTEXT_REASON, "does not support tools", "does not support image input")


def _key_filter(cands: tuple[CandidateVerdict, ...], model: str, key: ClientKey | None) -> tuple[CandidateVerdict, ...]:
    """Drop, as the select stage does, the candidates whose served model the key may not use.
    The router checks the key after configuration and capabilities, before the context window:
    a candidate dropped only for its context window gets the key's reason when both apply."""
    if key is None or key.models_re is None:
        return cands
    request = SelectionRequest(model, key_models=key.allows)
    out = []
    for c in cands:
        judged = c.backend is not None and (c.kept or c.reason.startswith(_CONTEXT_REASON))
        why = filter_allowed_by_key(c.backend, request, _NO_HEALTH) if judged and c.backend is not None else ""
        out.append(dataclasses.replace(c, kept=False, reason=_KEY_REASON + why) if why else c)
    return tuple(out)


def _status(refused: str | None, route: Route | None, cands: tuple[CandidateVerdict, ...]) -> int:
    """The HTTP status the router would answer (before any upstream is tried)."""
    if refused:
        return 403
    if route is None or (route.by_model and all(c.backend is None for c in cands)):
        return 404
    if any(c.kept for c in cands):
        return 200
    if cands and all(c.reason.startswith(_KEY_REASON) for c in cands):
        return 403  # the select stage: this key may use none of the route's backends
    if cands and all(c.reason.startswith(_REQUEST_BOUND) for c in cands):
        return 400  # the select stage: dropped for what the request is (size, tools, images)
    return 503


_NO_HEALTH = NoHealth()


@click.command()
@click.option("--model", "-m", help="Requested model (overrides the request body's).")
@click.option("--prompt", "-p", help="The user message.")
@click.option("--request", "-r", type=click.Path(dir_okay=False), help="A JSON chat request body to explain.")
@click.option("--header", "-H", "headers", multiple=True, metavar="NAME=VALUE", help="A request header (repeatable).")
@click.option("--key", "key_name", help="Name of the client key the request would use.")
@click.option("--tools", is_flag=True, help="Pretend the request carries tools.")
@click.option("--images", is_flag=True, help="Pretend the request carries an image.")
@click.option("--spec", "spec_path", default=DEFAULT_SPEC, show_default=True, type=SPEC_ARG, help="Spec file.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def explain(model: str | None, prompt: str | None, request: str | None, headers: tuple[str, ...],
            key_name: str | None, tools: bool, images: bool, spec_path: str, fmt: str) -> None:
    """Show how the router would route a request, without sending anything: which rule
    matched, why each earlier rule did not, and the candidate backends in fallback order with
    why each is kept or dropped. Registered agents are not known offline.

    Runs without the production secrets: an undefined ${VAR} is a warning, and a backend that
    needs one counts as unconfigured (dropped), as the router treats a backend without its key."""
    if prompt is not None and request is not None:
        raise click.UsageError("give --prompt or --request, not both")
    built = build_or_exit(spec_path, "lenient")
    table = built.table
    key = _client_key(built, key_name)
    body = _request_body(model, prompt, request, tools, images, table.server.max_body)
    features = features_from_body(body, headers=_parse_headers(headers), key_name=key_name)
    features = dataclasses.replace(features, prompt_tokens=count_prompt_tokens(body, features.model))
    # the auth stage refuses a declared model the key may not use, before any routing
    refused = (f"client key {key.name!r} may not use model {features.model!r}: the router answers 403"
               if key is not None and not key.allows(features.model) and features.model in table.model_index else None)
    route, trace = (None, []) if refused else match_route(table, features, semantic=_semantic_matcher(table), trace=True)
    cands = _key_filter(candidates(table, route, features), features.model, key) if route else ()
    status = _status(refused, route, cands)
    if fmt == "json":
        out = {"model": features.model, "prompt_tokens": features.prompt_tokens, "tools": features.has_tools,
               "images": features.has_images, "key": key_name, "refused": refused, "status": status,
               "route": route.name if route else None,
               "routes": [dataclasses.asdict(v) for v in trace],
               "candidates": [{"backend": c.name, "kept": c.kept, "reason": c.reason} for c in cands]}
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(f"request: model={features.model!r} prompt_tokens={features.prompt_tokens} "
                   f"tools={features.has_tools} images={features.has_images} key={key_name!r}")
        if refused:
            click.echo(f"refused: {refused}")
            sys.exit(0)
        click.echo("routes:")
        for v in trace:
            click.echo(f"  {'→' if v.matched else ' '} {v.index}. {v.route}: {'MATCH' if v.matched else 'skip'} ({v.reason})")
        if route is None:
            click.echo("no route matches: the router answers 404 model_not_found")
        else:
            click.echo(f"candidates for {route.name!r} (strategy {route.strategy}):")
            for i, c in enumerate(cands, 1):
                if c.name == AGENTS_TARGET and c.backend is None:
                    click.echo(f"  {i}. {c.name}: registered agents, resolved at request time (not known offline)")
                    continue
                click.echo(f"  {i}. {c.name}: {'kept' if c.kept else 'dropped'} ({c.reason})")
            if status == 404:
                click.echo(f"no backend declares model {features.model!r}: the router answers 404 model_not_found")
            elif status == 403:
                click.echo(f"no candidate left: client key {key_name!r} may use none of these backends' models: "
                           "the router answers 403 model_not_allowed")
            elif status == 400:
                click.echo("no candidate can take this request (its size or what it needs): "
                           "the router answers 400 " + ("context_length_exceeded" if all(
                               c.reason.startswith(_CONTEXT_REASON) for c in cands) else "unsupported_request"))
            elif not any(c.kept for c in cands):
                agents = any(c.name == AGENTS_TARGET and c.backend is None for c in cands)
                click.echo("no candidate left" + (" unless a registered agent is live" if agents else "")
                           + ": the router answers 503 no_backend_available")
    sys.exit(0)


commands = [validate, compile_cmd, schema, explain]
