"""Edit ``iir.yaml`` in place, keeping every comment and untouched line byte-identical.

Used by ``iir models add|update|remove``. The text is loaded with ruamel.yaml's round-trip
loader, changed, dumped, and then only the lines that differ between "dump before the change"
and "dump after the change" are spliced into the original text, so any normalisation ruamel
would apply to untouched parts (indentation, quoting, spacing) never reaches the file. The
caller validates the new text before writing it with :func:`write_atomically`.
"""

from __future__ import annotations

import difflib
import io
import itertools
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.util import load_yaml_guess_indent

from iir.spec.diagnose import did_you_mean

__all__ = ["SpecEditError", "add_model", "edit_text", "remove_model", "update_model", "write_atomically"]


class SpecEditError(Exception):
    """The requested edit cannot be made (message is one line for the operator)."""


def _yaml(text: str) -> YAML:
    _, seq_indent, offset = load_yaml_guess_indent(text)
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=_mapping_indent(text), sequence=seq_indent or 2, offset=offset or 0)
    return y


def _mapping_indent(text: str) -> int:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for a, b in itertools.pairwise(lines):
        if re.match(r"^[^\s#-][^:]*:\s*(#.*)?$", a):
            stripped = b.lstrip(" ")
            if not stripped.startswith("-"):
                indent = len(b) - len(stripped)
                if indent > 0:
                    return indent
    return 2


def _dump(y: YAML, tree: Any) -> str:
    out = io.StringIO()
    y.dump(tree, out)
    return out.getvalue()


def _norm(line: str) -> str:
    return " ".join(line.split())


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _reindent(lines: list[str], pairs: list[tuple[str, str]]) -> list[str]:
    """Re-indent dumped ``lines`` the way the original file indents the same section.

    ``pairs`` are (dumped, original) lines that precede the change, nearest first; they give a
    map from dumped to original indentation, extrapolated for deeper levels."""
    levels: dict[int, int] = {}
    for dumped, original in pairs:
        levels.setdefault(_indent(dumped), _indent(original))
        if _indent(dumped) == 0:
            break
    levels.setdefault(0, 0)
    known = sorted(levels)
    out = []
    for line in lines:
        d = _indent(line)
        below = max(k for k in known if k <= d)
        lower = [k for k in known if k < below]
        ratio = (levels[below] - levels[lower[-1]]) / (below - lower[-1]) if lower else 1.0
        o = levels[below] + round((d - below) * ratio)
        out.append(" " * o + line[d:])
    return out


_TRAILING_COMMENT = re.compile(r"(\s+)(#[^'\"\n]*)(\n?)$")


def _keep_comment_spacing(original: str, changed: str) -> str:
    """``changed`` with its trailing comment where ``original`` had it (same comment): at the same
    column when the changed code still fits before it, else after the original's spacing."""
    was, now = _TRAILING_COMMENT.search(original), _TRAILING_COMMENT.search(changed)
    if was is None or now is None or was.group(2) != now.group(2):
        return changed
    code = changed[:now.start()]
    gap = was.start(2) - len(code) if len(code) < was.start(2) else len(was.group(1))
    return code + " " * gap + now.group(2) + now.group(3)


def _splice(orig: str, before: str, after: str) -> str:
    """Apply the line changes ``before → after`` to ``orig`` (which ``before`` may have normalised:
    ruamel uses one indentation for the whole file). Lines are aligned on their content with
    whitespace collapsed; changed lines take the original's indentation of their section."""
    o, a, b = orig.splitlines(True), before.splitlines(True), after.splitlines(True)
    to_orig: dict[int, int] = {}
    matcher = difflib.SequenceMatcher(None, [_norm(x) for x in a], [_norm(x) for x in o], autojunk=False)
    for tag, i1, i2, j1, _j2 in matcher.get_opcodes():
        if tag == "equal":
            to_orig.update({i1 + k: j1 + k for k in range(i2 - i1)})
    refuse = SpecEditError("cannot make this edit without reformatting other lines of the file")
    out: list[str] = []
    pos = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        if i1 < i2:
            mapped = [to_orig.get(i) for i in range(i1, i2)]
            if any(m is None for m in mapped):
                raise refuse
            first = mapped[0]
            assert first is not None
            if mapped != list(range(first, first + len(mapped))):
                raise refuse
            start, end = first, first + len(mapped)
        elif i1 - 1 in to_orig:
            start = end = to_orig[i1 - 1] + 1
        elif i1 in to_orig:
            start = end = to_orig[i1]
        else:
            raise refuse
        if start < pos:
            raise refuse
        pairs = [(a[i], o[to_orig[i]]) for i in range(i2 - 1 if i1 < i2 else i1 - 1, -1, -1) if i in to_orig]
        out.extend(o[pos:start])
        new = _reindent(b[j1:j2], pairs)
        if end - start == len(new):  # line for line: a changed line keeps its comment's original spacing
            new = [_keep_comment_spacing(o[start + k], line) for k, line in enumerate(new)]
        out.extend(new)
        pos = end
    out.extend(o[pos:])
    return "".join(out)


def edit_text(text: str, change: Callable[[CommentedMap], None]) -> str:
    """Apply ``change`` to the round-trip tree of ``text``; return the new text."""
    try:
        y = _yaml(text)
        tree = y.load(text)
    except YAMLError as e:
        raise SpecEditError(f"the spec is not valid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(tree, CommentedMap):
        raise SpecEditError("the spec is not a mapping")
    before = _dump(y, tree)
    change(tree)
    return _splice(text, before, _dump(y, tree))


def _backends(tree: CommentedMap) -> CommentedMap:
    backends = tree.get("backends")
    if not isinstance(backends, CommentedMap):
        raise SpecEditError("the spec has no `backends` mapping")
    return backends


def _backend(tree: CommentedMap, name: str) -> CommentedMap:
    backends = _backends(tree)
    if name not in backends:
        raise SpecEditError(f"unknown backend {name!r}{did_you_mean(name, [str(k) for k in backends])}")
    b = backends[name]
    if not isinstance(b, CommentedMap):
        raise SpecEditError(f"backend {name!r} is not a mapping")
    return b


def _flow_like(seq: Any) -> CommentedMap:
    """A new mapping in flow style when its siblings are written in flow style."""
    new = CommentedMap()
    if getattr(getattr(seq, "fa", None), "flow_style", False):
        new.fa.set_flow_style()
    return new


def _set_price(b: CommentedMap, model: str, price: tuple[float, float] | None) -> None:
    if price is None:
        return
    prices = b.get("price")
    if prices is None:
        prices = CommentedMap()
        prices.fa.set_flow_style()
        b["price"] = prices
    entry = _flow_like(prices)
    entry["input"], entry["output"] = price
    prices[model] = entry


def _set_upstream(b: CommentedMap, model: str, upstream: str | None) -> None:
    if upstream is None:
        return
    mapping = b.get("model_map")
    if upstream == model:
        if isinstance(mapping, CommentedMap):
            mapping.pop(model, None)
            if not mapping:
                del b["model_map"]
        return
    if mapping is None:
        mapping = CommentedMap()
        mapping.fa.set_flow_style()
        b["model_map"] = mapping
    mapping[model] = upstream


def add_model(text: str, model: str, *, backend: str, upstream: str | None = None,
              price: tuple[float, float] | None = None, new_backend: dict[str, Any] | None = None) -> str:
    """Add ``model`` to ``backend`` (created from ``new_backend`` fields when it does not exist)."""

    def change(tree: CommentedMap) -> None:
        backends = _backends(tree)
        if backend not in backends:
            if not new_backend:
                raise SpecEditError(f"unknown backend {backend!r}{did_you_mean(backend, [str(k) for k in backends])}; "
                                    "give --kind (and --url) to create it")
            entry = CommentedMap(new_backend)
            models = CommentedSeq([model])
            models.fa.set_flow_style()
            entry["models"] = models
            backends[backend] = entry
        else:
            b = _backend(tree, backend)
            models = b.get("models")
            if not isinstance(models, list):
                raise SpecEditError(f"backend {backend!r} has no `models` list")
            if model in models:
                raise SpecEditError(f"backend {backend!r} already serves {model!r}")
            models.append(model)
        b = _backend(tree, backend)
        _set_upstream(b, model, upstream)
        _set_price(b, model, price)

    return edit_text(text, change)


def _serving(tree: CommentedMap, model: str, backend: str | None) -> list[str]:
    names = [backend] if backend else [str(k) for k in _backends(tree)]
    found = [n for n in names if model in (_backend(tree, n).get("models") or [])]
    if not found:
        every = [str(m) for n in _backends(tree) for m in (_backends(tree)[n].get("models") or [])]
        where = f"backend {backend!r}" if backend else "any backend"
        raise SpecEditError(f"model {model!r} is not served by {where}{did_you_mean(model, every)}")
    return found


def update_model(text: str, model: str, *, backend: str | None = None, rename: str | None = None,
                 upstream: str | None = None, price: tuple[float, float] | None = None) -> str:
    """Rename a model (also in route conditions and key allow-lists) and/or set its upstream name or price."""

    def change(tree: CommentedMap) -> None:
        for name in _serving(tree, model, backend):
            b = _backend(tree, name)
            target = model
            if rename and rename != model:
                models = b["models"]
                if rename in models:
                    raise SpecEditError(f"backend {name!r} already serves {rename!r}")
                models[models.index(model)] = rename
                for key in ("model_map", "price"):
                    section = b.get(key)
                    if isinstance(section, CommentedMap) and model in section:
                        section.insert(list(section).index(model), rename, section.pop(model))
                target = rename
            _set_upstream(b, target, upstream)
            _set_price(b, target, price)
        if rename and rename != model:
            _rename_references(tree, model, rename)

    return edit_text(text, change)


def _rename_references(tree: CommentedMap, old: str, new: str) -> None:
    lists: list[Any] = []
    for route in tree.get("routes") or []:
        if isinstance(route, CommentedMap) and isinstance(route.get("match"), CommentedMap):
            lists.append((route["match"], "model"))
    for key in (tree.get("auth") or {}).get("keys") or []:
        if isinstance(key, CommentedMap):
            lists.append((key, "models"))
    for holder, field in lists:
        value = holder.get(field)
        if value == old:
            holder[field] = new
        elif isinstance(value, list) and old in value:
            value[value.index(old)] = new


def remove_model(text: str, model: str, *, backend: str | None = None) -> str:
    """Remove ``model`` from ``backend`` (or every backend serving it), with its price and mapping."""

    def change(tree: CommentedMap) -> None:
        for name in _serving(tree, model, backend):
            b = _backend(tree, name)
            if len(b["models"]) == 1:
                raise SpecEditError(f"{model!r} is the only model of backend {name!r}; remove the backend instead")
            b["models"].remove(model)
            for key in ("model_map", "price"):
                section = b.get(key)
                if isinstance(section, CommentedMap) and model in section:
                    del section[model]
                    if not section:
                        del b[key]

    return edit_text(text, change)


def write_atomically(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file in the same folder, fsync, rename),
    keeping the file's permissions. A symlink stays a symlink: the file it points to is replaced."""
    target = Path(path).resolve() if Path(path).is_symlink() else Path(path)
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
