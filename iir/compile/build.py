"""The config pipeline shared by ``iir validate``, ``iir compile`` and ``iir serve``:
load → check → compile. Raises :class:`~iir.errors.ConfigError` with every error at once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from iir.compile.compiler import compile_spec
from iir.errors import ConfigError, Diagnostic
from iir.spec.check import check_spec
from iir.spec.load import LoadedSpec, load_spec
from iir.table import RoutingTable

__all__ = ["Built", "build_table"]


@dataclass(frozen=True)
class Built:
    table: RoutingTable
    loaded: LoadedSpec
    warnings: tuple[Diagnostic, ...]


def build_table(path: str | Path, env: Mapping[str, str]) -> Built:
    loaded = load_spec(path, env)
    diags = check_spec(loaded, env)
    errors = [d for d in diags if d.severity == "error"]
    if errors:
        raise ConfigError(diags)
    warnings = tuple(d for d in diags if d.severity != "error")
    return Built(compile_spec(loaded.spec, env, str(path)), loaded, warnings)
