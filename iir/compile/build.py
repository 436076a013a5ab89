"""The config pipeline shared by ``iir validate``, ``iir compile`` and ``iir serve``:
load → check → compile. Raises :class:`~iir.errors.ConfigError` with every error at once."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from iir.compile.compiler import compile_spec
from iir.errors import ConfigError, Diagnostic
from iir.spec.check import check_spec
from iir.spec.load import LoadedSpec, load_spec, load_text
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
    return Built(compile_spec(loaded.spec, env, source), loaded, tuple(diags))


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


def build_table(path: str | Path, env: Mapping[str, str]) -> Built:
    """Load, check and compile the spec file at ``path``. Warnings come back on :class:`Built`;
    errors (with the warnings found alongside) raise :class:`ConfigError`."""
    with _gc_paused():
        return _finish(load_spec(path, env), env, str(path))


def build_text(text: str | bytes, name: str, env: Mapping[str, str]) -> Built:
    """Like :func:`build_table` for spec text held in memory (``name`` labels the diagnostics)."""
    with _gc_paused():
        return _finish(load_text(text, name, env), env, name)
