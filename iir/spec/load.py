"""Load ``iir.yaml``: read, parse with a source map, expand ``${VAR}``, validate.

The only place YAML is read and the only place ``${VAR}`` / ``${VAR:-default}`` is expanded.
Every problem becomes a :class:`~iir.errors.Diagnostic` with ``file:line:col`` and the dotted
path; all are collected and raised together in one :class:`~iir.errors.ConfigError`, sorted by
position. Findings that do not stop loading (a secret written literally in the file) are
returned as warnings on :class:`LoadedSpec`.

Environment modes: ``strict`` (``serve``, ``compile``, ``validate``) makes an undefined ``${VAR}``
without a default an error. ``lenient`` is for offline tools (``models``, ``explain``, ``export``,
``validate --allow-missing-env``) run where production secrets are absent: an undefined variable
becomes one warning per variable. In a secret field it expands to nothing (the value is unset, as
``${VAR:-}`` would give, so a backend counts as unconfigured); anywhere else to a marked
placeholder (:data:`PLACEHOLDER_PREFIX`, e.g. ``http://iir-unset-LLMD_ENDPOINT.invalid``), never to
a real-looking value. :attr:`LoadedSpec.unset_env` lists where each one was used.
"""

from __future__ import annotations

import re
import warnings as _warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

try:  # libyaml-based parser (ruamel.yaml.clibz / clib): ~5x faster, used when the spec is clean
    from ruamel.yaml.cyaml import CSafeLoader
except ImportError:  # pragma: no cover - depends on the installed wheels
    CSafeLoader = None  # type: ignore[misc,assignment]

from iir.errors import ConfigError, Diagnostic
from iir.spec.diagnose import dotted, pydantic_diagnostics
from iir.spec.models import Spec

__all__ = ["ENV_MODES", "MAX_SPEC_BYTES", "MAX_SPEC_NODES", "PLACEHOLDER_PREFIX", "SECRET_KEYS", "EnvMode",
           "LoadedSpec", "SourceMap", "dotted", "load_spec", "load_text", "parse_yaml", "placeholders_in",
           "unset_env_warnings"]

MAX_SPEC_BYTES = 5 * 1024 * 1024
MAX_SPEC_NODES = 1_000_000  # values after alias expansion: guards against "billion laughs"
SECRET_KEYS = frozenset({"api_key", "key", "admin_token", "token"})
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_URL_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s]+@")
_DUP = re.compile(r'found duplicate key "(.*?)" with value')
Path_ = tuple[str | int, ...]
EnvMode = Literal["strict", "lenient"]
ENV_MODES: tuple[EnvMode, ...] = ("strict", "lenient")
#: Start of the value a lenient load gives an undefined non-secret variable: ``iir-unset-NAME.invalid``
#: (``.invalid`` is reserved, RFC 2606: it can never resolve). Case-insensitive, as URL hosts are.
PLACEHOLDER_PREFIX = "iir-unset-"
_PLACEHOLDER = re.compile(re.escape(PLACEHOLDER_PREFIX) + r"([A-Za-z_][A-Za-z0-9_]*)\.invalid", re.IGNORECASE)


@dataclass
class SourceMap:
    """Dotted path → (line, col), 1-based; keys map to where the key is written."""

    file: str
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    from_env: set[Path_] = field(default_factory=set)
    pending_text: str | None = field(default=None, repr=False)

    def _fill(self) -> None:
        """Positions are found lazily: a clean spec loaded by the fast parser never needs them;
        the first diagnostic re-parses the text with the round-trip parser (which knows lines)."""
        if self.pending_text is None:
            return
        text, self.pending_text = self.pending_text, None
        _record_positions(parse_yaml(text, self.file), (), self, [0])

    def locate(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Best position for ``path``: itself, else its nearest ancestor."""
        self._fill()
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


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    source_map: SourceMap
    text: str
    warnings: tuple[Diagnostic, ...] = ()
    #: Lenient loads only: ``(path, variable)`` for every undefined variable a value used.
    unset_env: tuple[tuple[Path_, str], ...] = ()


_UNSET_WARNING = re.compile(r"[A-Za-z_][A-Za-z0-9_]* is not set; ")


def unset_env_warnings(diags: tuple[Diagnostic, ...] | list[Diagnostic]) -> list[Diagnostic]:
    """The lenient load's "NAME is not set; ..." warnings among ``diags``."""
    return [d for d in diags if d.severity == "warning" and _UNSET_WARNING.match(d.message)]


def placeholders_in(text: str) -> list[str]:
    """Names of the variables whose lenient-load placeholder appears in ``text`` (upper-cased)."""
    return list(dict.fromkeys(m.group(1).upper() for m in _PLACEHOLDER.finditer(text)))


def _sort(diags: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(diags, key=lambda d: (d.file, d.line, d.col, d.path, d.message))


def load_spec(path: str | Path, env: Mapping[str, str], missing_env: EnvMode = "strict") -> LoadedSpec:
    """Read and validate a spec file. Raises :class:`ConfigError` with every diagnostic."""
    return load_text(read_spec_bytes(path), str(path), env, missing_env)


def read_spec_bytes(path: str | Path) -> bytes:
    """The file's bytes, refusing directories, unreadable and oversized files (:class:`ConfigError`)."""
    name = str(path)
    try:
        p = Path(path)
        if p.is_dir():
            raise ConfigError([Diagnostic(name, 1, 1, "", "is a directory, not a spec file")])
        size = p.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise ConfigError([Diagnostic(name, 1, 1, "", f"file is {size} bytes; a spec may be at most {MAX_SPEC_BYTES} bytes")])
        with p.open("rb") as f:
            return f.read(MAX_SPEC_BYTES + 1)  # never more, even from a device or a growing file
    except OSError as e:
        raise ConfigError([Diagnostic(name, 1, 1, "", f"cannot read spec: {e.strerror or e}")]) from None


def read_spec_text(path: str | Path) -> str:
    """:func:`read_spec_bytes` decoded as the loader does (empty, binary and non-UTF-8 files refused)."""
    return _decode(read_spec_bytes(path), str(path))


def load_text(data: bytes | str, name: str, env: Mapping[str, str], missing_env: EnvMode = "strict") -> LoadedSpec:
    """Validate spec text (bytes are decoded as strict UTF-8). ``missing_env``: see the module doc."""
    text = _decode(data, name) if isinstance(data, bytes) else data
    if len(text) > MAX_SPEC_BYTES:
        raise ConfigError([Diagnostic(name, 1, 1, "", f"the spec is larger than {MAX_SPEC_BYTES} bytes")])
    if not text.strip():
        raise ConfigError([Diagnostic(name, 1, 1, "", "the spec file is empty")])
    smap = SourceMap(name)
    tree = _fast_parse(text)
    if tree is None:
        tree = parse_yaml(text, name)
        if tree is None:
            raise ConfigError([Diagnostic(name, 1, 1, "", "the spec file has no content (only comments)")])
        _record_positions(tree, (), smap, [0])
    else:
        smap.pending_text = text
    _check_expansion(tree, smap)
    diags: list[Diagnostic] = []
    warnings: list[Diagnostic] = []
    walker = _Walker(smap, env, diags, warnings, text, lenient=missing_env == "lenient")
    plain = walker.walk(tree, ())
    if not isinstance(plain, dict):
        raise ConfigError([smap.diag((), "the spec must be a mapping with `version`, `backends` and `routes`")])
    try:
        spec = Spec.model_validate(plain)
    except ValidationError as e:
        skip = {path for path in walker.unset}
        found = pydantic_diagnostics(e, Spec, plain, smap.locate, name, skip)
        # Lenient: where a placeholder did not fit its field, the variable is needed after all;
        # report it (not the placeholder) as the strict load would.
        needed = [d for d in walker.deferred if any(_within(d.path, f.path) for f in found)]
        at = {d.path for d in needed}
        diags.extend(f for f in found if f.path not in at)
        diags.extend(needed)
    if diags:
        raise ConfigError(_sort(diags))
    return LoadedSpec(spec, smap, text, tuple(_sort(warnings)), tuple(walker.unset_env))


def _within(path: str, ancestor: str) -> bool:
    """Whether dotted ``path`` is ``ancestor`` or below it."""
    return path == ancestor or not ancestor or path.startswith((f"{ancestor}.", f"{ancestor}["))


def _decode(data: bytes, name: str) -> str:
    if len(data) > MAX_SPEC_BYTES:
        raise ConfigError([Diagnostic(name, 1, 1, "", f"the spec is larger than {MAX_SPEC_BYTES} bytes")])
    if not data.strip():
        raise ConfigError([Diagnostic(name, 1, 1, "", "the spec file is empty")])
    if b"\x00" in data[:8192]:
        raise ConfigError([Diagnostic(name, 1, 1, "", "this is a binary file, not a YAML spec")])
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError([Diagnostic(name, line, col, "", f"the file is not valid UTF-8 (byte 0x{data[e.start]:02x}); save it as UTF-8")]) from None


def _yaml_problem(e: MarkedYAMLError) -> str:
    problem = (e.problem or e.context or "invalid YAML").strip()
    if "\t" in problem or "'\\t'" in problem:
        return "tab character; YAML is indented with spaces, not tabs"
    if m := _DUP.search(problem):
        return f"duplicate key {m.group(1)!r}: each key may appear only once in a mapping"
    if "undefined alias" in problem:
        return problem.replace("found undefined alias", "undefined alias")
    return " ".join(problem.split())


def parse_yaml(text: str, name: str) -> Any:
    """Parse YAML text into a ruamel round-trip tree. Raises :class:`ConfigError` on syntax errors."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigError([Diagnostic(name, line, col, "", f"YAML syntax error: {_yaml_problem(e)}")]) from None
    except YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError([Diagnostic(name, 1, 1, "", f"YAML error: {first}")]) from None
    except RecursionError:
        raise ConfigError([Diagnostic(name, 1, 1, "", "YAML error: the document is nested too deeply")]) from None


class _Walker:
    """ruamel tree → plain Python, filling the source map, expanding ${VAR}, spotting literal secrets."""

    def __init__(self, smap: SourceMap, env: Mapping[str, str], diags: list[Diagnostic],
                 warnings: list[Diagnostic], text: str = "", *, lenient: bool = False) -> None:
        self.smap, self.env, self.diags, self.warnings = smap, env, diags, warnings
        self.lines = text.splitlines()
        self.lenient = lenient
        self.unset: list[Path_] = []
        self.unset_env: list[tuple[Path_, str]] = []
        self.deferred: list[Diagnostic] = []  # lenient: the strict errors, reported if validation fails
        self.warned: set[str] = set()
        self.too_deep = False

    def walk(self, node: Any, path: Path_) -> Any:
        if len(path) > 64:
            if not self.too_deep:
                self.too_deep = True
                self.diags.append(self.smap.diag(path, "nested more than 64 levels deep"))
            return None
        if isinstance(node, dict):
            return self._map(node, path)
        if isinstance(node, list):
            return [self.walk(item, (*path, i)) for i, item in enumerate(node)]
        if isinstance(node, str):
            return self._scalar(str(node), path)
        return node

    def _map(self, node: dict[Any, Any], path: Path_) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in node:
            key = k if isinstance(k, str) else str(k)
            kpath = (*path, key)
            value = node[k]
            out[key] = self.walk(value, kpath)
            if isinstance(value, str) and "${" not in value and value.strip() and self._secret_field(path, key, value):
                self.warnings.append(self.smap.diag(
                    kpath, "a secret is written literally in the file; write it as ${VAR} so it comes from the environment",
                    severity="warning"))
        return out

    def _column_of(self, path: Path_, needle: str, offset: int) -> tuple[int, int]:
        """Position of ``needle`` (at ``offset`` in the value) in the source, else the value's."""
        line, col = self.smap.locate(path)
        if 0 < line <= len(self.lines):
            src = self.lines[line - 1]
            for shift in (0, 1):  # plain, or after an opening quote
                start = col - 1 + shift + offset
                if src[start:start + len(needle)] == needle:
                    return line, start + 1
        return line, col

    @staticmethod
    def _secret_field(path: Path_, key: str, value: str) -> bool:
        if key == "redis_url":
            return _URL_PASSWORD.search(value) is not None
        if path and path[-1] == "headers":
            return key.lower() in SECRET_HEADERS
        if key == "key":
            return len(path) >= 2 and path[-2] == "keys"  # auth.keys[i].key
        return key in SECRET_KEYS

    @staticmethod
    def _is_secret_path(path: Path_) -> bool:
        if not path or not isinstance(path[-1], str):
            return False
        key = path[-1]
        if len(path) >= 2 and path[-2] == "headers":
            return key.lower() in SECRET_HEADERS
        if key == "key":
            return len(path) >= 3 and path[-3] == "keys"  # auth.keys[i].key
        return key in SECRET_KEYS

    @staticmethod
    def _placeholder(var: str, path: Path_, at_start: bool) -> str:
        """A value that can never be mistaken for a real one (and, at the start of a URL field,
        still parses as a URL whose host cannot resolve)."""
        name = f"{PLACEHOLDER_PREFIX}{var}.invalid"
        key = path[-1] if path and isinstance(path[-1], str) else ""
        if at_start and (key == "url" or key.endswith("_url")):
            return ("redis://" if key == "redis_url" else "http://") + name
        return name

    def _scalar(self, value: str, path: Path_) -> str | None:
        if "${" not in value:
            return value
        self.smap.from_env.add(path)
        missing: list[tuple[str, int]] = []
        secret = self.lenient and self._is_secret_path(path)

        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if self.env.get(var):
                return self.env[var]
            if default is not None:
                return default
            missing.append((var, m.start()))
            if not self.lenient or secret:
                return ""
            return self._placeholder(var, path, m.start() == 0)

        result = _VAR.sub(sub, value)
        for var, offset in missing:
            line, col = self._column_of(path, f"${{{var}", offset)
            error = Diagnostic(self.smap.file, line, col, dotted(path),
                               f"environment variable {var} is not set (write ${{{var}:-default}} to make it optional)")
            if not self.lenient:
                self.unset.append(path)
                self.diags.append(error)
                continue
            self.unset_env.append((path, var))
            self.deferred.append(error)
            if var not in self.warned:  # one warning per variable, at its first use
                self.warned.add(var)
                how = "left empty (a secret)" if secret else f"using the placeholder {self._placeholder(var, path, offset == 0)!r}"
                self.warnings.append(Diagnostic(self.smap.file, line, col, dotted(path),
                                                f"{var} is not set; {how}", "warning"))
        if "${" in _VAR.sub("", value):
            self.unset.append(path)  # like an unset variable: no follow-up errors about this value
            self.diags.append(self.smap.diag(path, "malformed ${...}: write ${NAME} or ${NAME:-default}"))
        # A whole-value reference that expands to nothing means "unset" (e.g. an optional key).
        if result == "" and _VAR.fullmatch(value.strip()):
            return None
        return result


def _fast_parse(text: str) -> Any:
    """The document parsed by libyaml, or ``None`` to use the round-trip parser instead (no C
    parser installed, a tab in the text, an empty document, or any YAML problem: the
    round-trip parser then reports it with its exact position and wording)."""
    if CSafeLoader is None or "\t" in text:
        return None
    loader = CSafeLoader(text, version=(1, 2))
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            return loader.get_single_data()
    except (YAMLError, ValueError, TypeError, RecursionError):
        return None  # not swallowed: the round-trip parser re-reads the text and reports it
    finally:
        loader.dispose()


def _record_positions(node: Any, path: Path_, smap: SourceMap, budget: list[int]) -> None:
    """Fill ``smap`` with the 1-based position of every key, value and item of a round-trip tree."""
    budget[0] += 1
    if budget[0] > MAX_SPEC_NODES or len(path) > 64:
        return
    if isinstance(node, CommentedMap):
        for k in node:
            kpath = (*path, k if isinstance(k, str) else str(k))
            for table, getter in ((smap.keys, node.lc.key), (smap.values, node.lc.value)):
                try:
                    line, col = getter(k)
                except (KeyError, TypeError, IndexError):
                    continue
                table[kpath] = (line + 1, col + 1)
            _record_positions(node[k], kpath, smap, budget)
    elif isinstance(node, CommentedSeq):
        for i, item in enumerate(node):
            try:
                line, col = node.lc.item(i)
                smap.values[(*path, i)] = (line + 1, col + 1)
            except (KeyError, TypeError, IndexError):
                pass
            _record_positions(item, (*path, i), smap, budget)


def _check_expansion(tree: Any, smap: SourceMap) -> None:
    """Refuse documents whose aliases expand beyond :data:`MAX_SPEC_NODES` values, or that
    refer to themselves. Sizes are memoised per node, so this costs one pass over the source."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            return 1
        ident = id(node)
        if ident in sizes:
            return sizes[ident]
        if ident in busy:
            raise _Recursive
        busy.add(ident)
        children = node.values() if isinstance(node, dict) else node
        total = 1 + sum(size(child) for child in children)
        busy.discard(ident)
        sizes[ident] = min(total, 10 * MAX_SPEC_NODES)
        return sizes[ident]

    items = list(tree.items()) if isinstance(tree, dict) else [(None, tree)]
    try:
        sized = [(size(value), key) for key, value in items]
    except _Recursive:
        raise ConfigError([smap.diag((), "an alias refers to the node that contains it (a recursive structure)")]) from None
    except RecursionError:
        raise ConfigError([smap.diag((), "the document is nested too deeply")]) from None
    if sum(n for n, _ in sized) > MAX_SPEC_NODES:
        _n, key = max(sized, key=lambda x: x[0])
        path: Path_ = (str(key),) if key is not None else ()
        raise ConfigError([smap.diag(
            path, f"the spec expands to more than {MAX_SPEC_NODES} values (aliases repeating aliases?)")])


class _Recursive(Exception):
    """An alias refers to one of its own ancestors."""
