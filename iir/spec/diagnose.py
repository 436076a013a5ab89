"""Turn pydantic validation errors into operator-facing diagnostics.

pydantic reports locations that include union tags and validator names, and messages written
for programmers ("Input should be a valid list"). This module maps each error back onto the
data path (so the source map can place it), rewrites the message into one short sentence, and
adds "did you mean" suggestions for misspelled keys and ``kind`` values, using the field names
allowed by the model at that place in the spec.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from iir.errors import Diagnostic

__all__ = ["allowed_fields", "did_you_mean", "dotted", "pydantic_diagnostics"]

PathT = tuple[str | int, ...]

_NAME_HINT = "use lower-case letters, digits, '.', '_' or '-' (at most 63), starting with a letter or digit"
_EXPECTED = {
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "bool_type": "true or false", "bool_parsing": "true or false", "int_type": "an integer",
    "int_parsing": "an integer", "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
    "string_type": "a string", "none_required": "null",
}


def dotted(path: Iterable[str | int]) -> str:
    """``("routes", 0, "to")`` → ``routes[0].to``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest option, or an empty string."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _members(tp: Any) -> list[Any]:
    tp = _strip(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [_strip(a) for a in typing.get_args(tp)]
    return [tp]


def _pick_model(tp: Any, data: Any) -> Any:
    """For a union, the member that ``data`` is meant to be (by ``kind`` when it has one)."""
    members = _members(tp)
    models = [m for m in members if _is_model(m)]
    if len(members) == 1 or not models:
        return members[0]
    if isinstance(data, dict) and "kind" in data:
        for m in models:
            kind = m.model_fields.get("kind")
            if kind is not None and data["kind"] in typing.get_args(_strip(kind.annotation)):
                return m
    return models[0] if len(models) == 1 else tp


def _type_at(root: type[BaseModel], path: PathT, data: Any) -> Any:
    tp: Any = root
    node = data
    for part in path:
        tp = _pick_model(tp, node)
        origin = typing.get_origin(tp)
        if _is_model(tp) and isinstance(part, str) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin is list and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        else:
            return None
        node = node.get(part) if isinstance(node, dict) else (
            node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
    return _pick_model(tp, node)


def allowed_fields(root: type[BaseModel], path: PathT, data: Any) -> list[str]:
    """Field names the model accepts at ``path`` (the mapping that holds the key)."""
    tp = _type_at(root, path, data)
    names: list[str] = []
    for m in _members(tp) if tp is not None else []:
        if _is_model(m):
            names.extend(n for n in m.model_fields if n not in names)
    return names


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[PathT, bool]:
    """Keep the parts of a pydantic location that exist in the data; drop union tags.

    Returns the path and whether the error is about a mapping *key* (pydantic's ``[key]``)."""
    out: list[str | int] = []
    node = data
    is_key = False
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if part == "[key]":
            is_key = True
        elif (isinstance(node, dict) and part in node) or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and last and part != node.get("kind"):
            out.append(part)  # a missing or unknown key (not the union tag of a model-level error)
    return tuple(out), is_key


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _message(e: dict[str, Any]) -> str:
    kind, ctx = e["type"], e.get("ctx") or {}
    got = f" (got {_short(e.get('input'))})" if "input" in e else ""
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}{got}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected', 'one of the allowed values')}{got}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"must be {op} {bound}{got}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length', 1)} item(s)"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must be at least {n} characters{got}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length', '?')} characters"
    if kind == "string_pattern_mismatch":
        return f"invalid name{got}: {_NAME_HINT}"
    return str(e["msg"]).removeprefix("Value error, ")


def _one(e: dict[str, Any], root: type[BaseModel], data: Any) -> tuple[PathT, bool, str]:
    path, is_key = _data_path(e["loc"], data)
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind == "extra_forbidden":
        name = str(path[-1]) if path else "?"
        options = allowed_fields(root, path[:-1], data)
        hint = did_you_mean(name, options) or (f"; allowed: {', '.join(options)}" if options else "")
        return path, True, f"unknown field {name!r}{hint}"
    if kind == "missing":
        return path[:-1], False, f"missing required field {path[-1]!r}" if path else "missing required field"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()]
        if not tags:
            tags = list(_kinds(root, path, data))
        if kind == "union_tag_not_found":
            return path, False, f"missing required field 'kind' (one of: {', '.join(tags)})"
        tag = str(ctx.get("tag", ""))
        return (*path, "kind"), False, f"unknown kind {tag!r}{did_you_mean(tag, tags)}; expected one of: {', '.join(tags)}"
    if kind == "string_pattern_mismatch" and is_key:
        return path, True, f"invalid name {path[-1]!r}: {_NAME_HINT}" if path else _message(e)
    msg = _message(e)
    if kind == "value_error" and not is_key:
        # a model-level check whose message starts with one of the mapping's keys ("url must
        # start with http://") is placed on that key's value
        node = _node_at(data, path)
        field = msg.split(" ", 1)[0]
        if isinstance(node, dict) and field in node:
            return (*path, field), False, msg
    return path, is_key, msg


def _node_at(data: Any, path: PathT) -> Any:
    node = data
    for part in path:
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            continue
        if not (isinstance(node, dict) and part in node):
            return None
        node = node[part]
    return node


def _kinds(root: type[BaseModel], path: PathT, data: Any) -> list[str]:
    tp = _type_at(root, path[:-1], data)
    origin = typing.get_origin(tp)
    value = typing.get_args(tp)[1] if origin is dict else tp
    out: list[str] = []
    for m in _members(value):
        if _is_model(m) and "kind" in m.model_fields:
            out.extend(typing.get_args(_strip(m.model_fields["kind"].annotation)))
    return out


def pydantic_diagnostics(err: ValidationError, root: type[BaseModel], data: Any, locate: Any,
                         file: str, skip: set[PathT] = frozenset()) -> list[Diagnostic]:  # type: ignore[assignment]
    """Every error of ``err`` as a diagnostic. ``locate(path, key=bool)`` gives ``(line, col)``.

    Errors of the alternatives of one union at one path are merged ("expected a list or
    'by-model'"); paths in ``skip`` (already reported, e.g. an unset variable) are dropped, and
    so are follow-ups about them: an error on the mapping that holds a skipped field and names
    it ("needs a url" when ``url: ${UNSET}``)."""
    merged: dict[tuple[PathT, bool], list[str]] = {}
    for e in err.errors(include_url=False):
        path, is_key, msg = _one(dict(e), root, data)
        if path in skip or any(s and s[:-1] == path and str(s[-1]) in msg for s in skip):
            continue
        merged.setdefault((path, is_key), [])
        if msg not in merged[(path, is_key)]:
            merged[(path, is_key)].append(msg)
    out: list[Diagnostic] = []
    for (path, is_key), msgs in merged.items():
        line, col = locate(path, key=is_key)
        if len(msgs) > 1 and all(m.startswith("expected ") for m in msgs):
            msgs = [_join(msgs)]
        out.extend(Diagnostic(file, line, col, dotted(path), msg) for msg in msgs)
    return out


def _join(msgs: list[str]) -> str:
    """``expected a list (got 5)`` + ``expected 'by-model' (got 5)`` → ``expected a list or 'by-model' (got 5)``."""
    tails = {m.rsplit(" (got ", 1)[1] for m in msgs if " (got " in m}
    heads = [m.removeprefix("expected ").rsplit(" (got ", 1)[0] for m in msgs]
    got = f" (got {tails.pop()}" if len(tails) == 1 else ""
    return "expected " + " or ".join(heads) + got
