"""The config pipeline shared by ``iir validate``, ``iir compile`` and ``iir serve``:
load → check → compile. Raises :class:`~iir.errors.ConfigError` with every error at once.

``missing_env="lenient"`` (offline tools; see :mod:`iir.spec.load`) loads a spec whose ``${VAR}``
are not all defined; a backend that uses an undefined variable is compiled as unconfigured
("NAME is not set"), as the router treats a backend without its key."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from iir.compile.compiler import compile_spec
from iir.errors import ConfigError, Diagnostic
from iir.spec.check import check_spec
from iir.spec.load import EnvMode, LoadedSpec, load_spec, load_text
from iir.table import RoutingTable

__all__ = ["Built", "build_table", "build_text"]


@dataclass(frozen=True)
class Built:
    table: RoutingTable
    loaded: LoadedSpec
    warnings: tuple[Diagnostic, ...]


def _finish(loaded: LoadedSpec, env: Mapping[str, str], source: str) -> Built:
    diags = sorted([*loaded.warnings, *check_spec(loaded, env)],
                   key=lambda d: (d.file, d.line, d.col, d.path, d.message))
    if any(d.severity == "error" for d in diags):
        raise ConfigError(diags)
    return Built(_unset_backends(compile_spec(loaded.spec, env, source), loaded), loaded, tuple(diags))


def _unset_backends(table: RoutingTable, loaded: LoadedSpec) -> RoutingTable:
    """Lenient loads: a backend whose settings use an undefined variable is unconfigured."""
    missing: dict[str, str] = {}
    for path, var in loaded.unset_env:
        if len(path) >= 2 and path[0] == "backends" and isinstance(path[1], str):
            missing.setdefault(path[1], var)
    if not missing:
        return table
    backends = {name: dataclasses.replace(b, configured=False, unconfigured_reason=f"{missing[name]} is not set")
                if name in missing else b for name, b in table.backends.items()}
    return dataclasses.replace(table, backends=MappingProxyType(backends))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Building a large table allocates hundreds of thousands of acyclic objects; the cyclic
    collector would rescan the growing heap many times (over half the time for a 10k-rule
    spec). Reference counting still frees everything meanwhile; the previous state is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_table(path: str | Path, env: Mapping[str, str], missing_env: EnvMode = "strict") -> Built:
    """Load, check and compile the spec file at ``path``. Warnings come back on :class:`Built`;
    errors (with the warnings found alongside) raise :class:`ConfigError`."""
    with _gc_paused():
        return _finish(load_spec(path, env, missing_env), env, str(path))


def build_text(text: str | bytes, name: str, env: Mapping[str, str], missing_env: EnvMode = "strict") -> Built:
    """Like :func:`build_table` for spec text held in memory (``name`` labels the diagnostics)."""
    with _gc_paused():
        return _finish(load_text(text, name, env, missing_env), env, name)
