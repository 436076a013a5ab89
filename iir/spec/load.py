"""Load ``iir.yaml``: read, parse with a source map, expand ``${VAR}``, validate.

The only place YAML is read and the only place ``${VAR}`` / ``${VAR:-default}`` is expanded.
Every problem becomes a :class:`~iir.errors.Diagnostic` with ``file:line:col`` and the dotted
path; all are collected and raised together in one :class:`~iir.errors.ConfigError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from iir.errors import ConfigError, Diagnostic
from iir.spec.models import Spec

__all__ = ["MAX_SPEC_BYTES", "LoadedSpec", "SourceMap", "load_spec", "load_text"]

MAX_SPEC_BYTES = 5 * 1024 * 1024
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Path_ = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Dotted path → (line, col), 1-based; keys map to where the key is written."""

    file: str
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    from_env: set[Path_] = field(default_factory=set)

    def locate(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Best position for ``path``: itself, else its nearest ancestor."""
        table = self.keys if key else self.values
        p = tuple(path)
        while p:
            if p in table:
                return table[p]
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), (1, 1))

    def diag(self, path: Path_, message: str, *, key: bool = False, severity: str = "error") -> Diagnostic:
        line, col = self.locate(path, key=key)
        return Diagnostic(self.file, line, col, dotted(path), message, severity)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    source_map: SourceMap
    text: str
    warnings: tuple[Diagnostic, ...] = ()


def load_spec(path: str | Path, env: Mapping[str, str]) -> LoadedSpec:
    """Read and validate a spec file. Raises :class:`ConfigError` with every diagnostic."""
    name = str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_SPEC_BYTES:
            raise ConfigError([Diagnostic(name, 1, 1, "", f"file is {size} bytes; a spec may be at most {MAX_SPEC_BYTES} bytes")])
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError([Diagnostic(name, 1, 1, "", f"cannot read spec: {e.strerror or e}")]) from None
    return load_text(data, name, env)


def load_text(data: bytes | str, name: str, env: Mapping[str, str]) -> LoadedSpec:
    """Validate spec text (bytes are decoded as strict UTF-8)."""
    text = _decode(data, name) if isinstance(data, bytes) else data
    tree = _parse(text, name)
    smap = SourceMap(name)
    diags: list[Diagnostic] = []
    plain = _walk(tree, (), smap, env, diags)
    if diags:
        raise ConfigError(diags)
    if not isinstance(plain, dict):
        raise ConfigError([smap.diag((), "the spec must be a mapping with `version`, `backends` and `routes`")])
    try:
        spec = Spec.model_validate(plain)
    except ValidationError as e:
        raise ConfigError(_pydantic_diags(e, smap, plain)) from None
    return LoadedSpec(spec, smap, text)


def _decode(data: bytes, name: str) -> str:
    if not data.strip():
        raise ConfigError([Diagnostic(name, 1, 1, "", "the spec file is empty")])
    if b"\x00" in data[:8192]:
        raise ConfigError([Diagnostic(name, 1, 1, "", "this is a binary file, not a YAML spec")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError([Diagnostic(name, line, col, "", f"the file is not valid UTF-8 (byte 0x{data[e.start]:02x})")]) from None


def _parse(text: str, name: str) -> Any:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = (e.problem or e.context or "invalid YAML").strip()
        if "\t" in problem or "tab" in problem.lower():
            problem = "tab characters cannot indent YAML; use spaces"
        elif "duplicate key" in str(e).lower() or "found duplicate key" in problem:
            problem = problem.replace("\n", " ")
        raise ConfigError([Diagnostic(name, line, col, "", f"YAML syntax error: {problem}")]) from None
    except YAMLError as e:
        raise ConfigError([Diagnostic(name, 1, 1, "", f"YAML error: {str(e).splitlines()[0]}")]) from None


def _walk(node: Any, path: Path_, smap: SourceMap, env: Mapping[str, str], diags: list[Diagnostic]) -> Any:
    """ruamel tree → plain Python, filling the source map and expanding ${VAR}."""
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for k in node:
            kpath = (*path, str(k))
            try:
                kl, kc = node.lc.key(k)
                vl, vc = node.lc.value(k)
                smap.keys[kpath] = (kl + 1, kc + 1)
                smap.values[kpath] = (vl + 1, vc + 1)
            except (KeyError, TypeError):
                pass
            out[str(k) if not isinstance(k, str) else k] = _walk(node[k], kpath, smap, env, diags)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, item in enumerate(node):
            ipath = (*path, i)
            try:
                line, col = node.lc.item(i)
                smap.values[ipath] = (line + 1, col + 1)
            except (KeyError, TypeError):
                pass
            items.append(_walk(item, ipath, smap, env, diags))
        return items
    if isinstance(node, str):
        return _expand(str(node), path, smap, env, diags)
    return node


def _expand(value: str, path: Path_, smap: SourceMap, env: Mapping[str, str], diags: list[Diagnostic]) -> str | None:
    if "${" not in value:
        return value
    smap.from_env.add(path)
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in env and env[var] != "":
            return env[var]
        if default is not None:
            return default
        missing.append(var)
        return ""

    result = _VAR.sub(sub, value)
    for var in missing:
        diags.append(smap.diag(path, f"environment variable {var} is not set (write ${{{var}:-default}} to make it optional)"))
    # A whole-value reference that expands to nothing means "unset" (e.g. an optional key).
    if result == "" and _VAR.fullmatch(value.strip()):
        return None
    return result


def _pydantic_diags(err: ValidationError, smap: SourceMap, data: dict[str, Any]) -> list[Diagnostic]:
    diags = []
    for e in err.errors(include_url=False):
        loc = _data_path(e["loc"], data)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            diags.append(smap.diag(loc, f"unknown field {loc[-1]!r}" if loc else msg, key=True))
            continue
        if e["type"] == "missing":
            diags.append(smap.diag(loc[:-1], f"missing required field {loc[-1]!r}"))
            continue
        msg = msg.removeprefix("Value error, ")
        diags.append(smap.diag(loc, msg))
    diags.sort(key=lambda d: (d.line, d.col))
    return diags


def _data_path(loc: tuple[Any, ...], data: Any) -> Path_:
    """Drop the parts of a pydantic location that are not in the data (union tags, etc.)."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        elif isinstance(part, str) and not isinstance(node, dict | list):
            continue
        elif isinstance(node, dict) and isinstance(part, str) and part not in node and part == loc[-1]:
            out.append(part)  # the missing or unknown key itself
        # else: a tag (e.g. the discriminator value) or 'function-after': skip it
    return tuple(out)
