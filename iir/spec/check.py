"""Semantic checks on a validated spec: cross-references, duplicates, shadowing, capacity.

:func:`check_spec` returns every finding at once, each a :class:`~iir.errors.Diagnostic`
located through the source map and sorted by position. Errors (``severity="error"``) stop the
spec from being used; warnings are shown but do not.

Errors: a route naming an unknown backend, client key or limit policy; two routes, keys or
backends-with-the-same-key-value sharing a name; ``model_map`` entries for models the backend
does not list; an empty prompt-token range; ``store: redis`` with no Redis URL.

Warnings: routes that can never match (shadowed by an earlier catch-all or an earlier rule
with the same or a wider model condition and no other conditions); ``by-model`` routes for an
exact model no backend declares; client keys allowing models nothing serves; fallbacks to a smaller context window; prompt ranges larger
than a target's window; backends nothing routes to; unconfigured backends; prices for
unlisted models; the same backend twice in one fallback list; an ``agents.allow_networks``
entry that admits every address (``0.0.0.0/0``, ``::/0``).

Fallback cycles cannot occur by construction: a route's ``to`` names backends (or the
``agents`` pool, or ``by-model``), never other routes, and backends have no fallback of their
own. A fallback list is walked once, in order, so there is nothing that could loop.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from iir.errors import Diagnostic
from iir.spec import models as m
from iir.spec.diagnose import did_you_mean
from iir.spec.load import LoadedSpec, SourceMap
from iir.spec.presets import PRESETS
from iir.table import AGENT_CAPABILITIES

__all__ = ["SPECIAL_TARGETS", "VIRTUAL_MODELS", "check_spec"]

SPECIAL_TARGETS = ("agents",)
VIRTUAL_MODELS = ("auto",)  # handled by routes, served by whatever the route picks


def check_spec(loaded: LoadedSpec, env: Mapping[str, str]) -> list[Diagnostic]:
    """Every semantic error and warning of a loaded spec, sorted by position."""
    spec, smap = loaded.spec, loaded.source_map
    diags: list[Diagnostic] = []
    unset = {p[1] for p, _ in loaded.unset_env if len(p) >= 2 and p[0] == "backends"}
    _check_backends(spec, smap, env, diags, unset)
    _check_routes(spec, smap, diags)
    _check_shadowing(spec, smap, diags)
    _check_auth(spec, smap, diags)
    _check_state(spec, smap, env, diags)
    _check_unused(spec, smap, diags)
    _check_agents(spec, smap, diags)
    return sorted(diags, key=lambda d: (d.file, d.line, d.col, d.path, d.message))


def _check_agents(spec: m.Spec, smap: SourceMap, diags: list[Diagnostic]) -> None:
    for i, net in enumerate(spec.agents.allow_networks):
        if ipaddress.ip_network(net, strict=False).prefixlen == 0:
            diags.append(_warn(smap, ("agents", "allow_networks", i),
                               f"{net!r} lets a registration point the router at any address (cloud metadata, "
                               "internal services): list the agents' own networks instead"))


def _warn(smap: SourceMap, path: tuple[str | int, ...], msg: str, *, key: bool = False) -> Diagnostic:
    return smap.diag(path, msg, key=key, severity="warning")


def _check_backends(spec: m.Spec, smap: SourceMap, env: Mapping[str, str], diags: list[Diagnostic],
                    unset: AbstractSet[str | int] = frozenset()) -> None:
    for name, b in spec.backends.items():
        for model in b.model_map:
            if model not in b.models:
                diags.append(smap.diag(("backends", name, "model_map", model),
                                       f"model_map entry {model!r} is not in this backend's models{did_you_mean(model, b.models)}",
                                       key=True))
        for model in b.price:
            if model not in b.models:
                diags.append(_warn(smap, ("backends", name, "price", model),
                                   f"price for {model!r}, which this backend does not list{did_you_mean(model, b.models)}",
                                   key=True))
        extra = [c for c in ("tools", "images", "json") if c in b.capabilities and c not in AGENT_CAPABILITIES
                 ] if b.kind == "agent" else []
        if extra and "capabilities" in b.model_fields_set:
            what = " or ".join("JSON mode" if c == "json" else c for c in extra)
            diags.append(_warn(smap, ("backends", name, "capabilities"),
                               f"an agent backend cannot take {what} (the agent protocol carries "
                               f"text only): requests needing it skip {name!r}"))
        preset = PRESETS[b.kind]
        from_env = env.get(preset.url_env) if b.url is None and preset.url_env else None
        if from_env and (problem := m.url_problem(from_env)):
            diags.append(smap.diag(("backends", name), f"{preset.url_env} (the URL of backend {name!r}) {problem}"))
        if b.url is None and preset.base_url is None and not (preset.url_env and env.get(preset.url_env)):
            diags.append(_warn(smap, ("backends", name), f"backend {name!r} has no URL (set `url` or {preset.url_env}); it will be skipped"))
        elif (isinstance(b, m.CloudBackend) and b.api_key is None and not (preset.key_env and env.get(preset.key_env))
              and name not in unset):  # a lenient load already warned: "NAME is not set"
            diags.append(_warn(smap, ("backends", name), f"backend {name!r} has no API key (set {preset.key_env}); it will be skipped"))


def _check_routes(spec: m.Spec, smap: SourceMap, diags: list[Diagnostic]) -> None:
    targets = [*spec.backends, *SPECIAL_TARGETS]
    limits = list(spec.policies.limits)
    key_names = [k.name for k in spec.auth.keys]
    declared = {model for b in spec.backends.values() for model in b.models}
    seen: dict[str, int] = {}
    for i, r in enumerate(spec.routes):
        path = ("routes", i)
        if r.name in seen:
            first = spec.routes[seen[r.name]]
            line = smap.locate(("routes", seen[r.name], "name"))[0]
            diags.append(smap.diag((*path, "name"), f"duplicate route name {first.name!r} (first used at line {line})"))
        else:
            seen[r.name] = i
        if r.to != "by-model":
            listed: set[str] = set()
            for j, target in enumerate(r.to):
                if target not in targets:
                    diags.append(smap.diag((*path, "to", j), f"unknown backend {target!r}{did_you_mean(target, targets)}"))
                elif target in listed:
                    diags.append(_warn(smap, (*path, "to", j), f"backend {target!r} is listed twice in this fallback list"))
                listed.add(target)
            _check_windows(spec, smap, i, r, diags)
        else:
            for j, model in enumerate(r.match.model):
                if not _is_glob(model) and model not in declared:
                    hint = did_you_mean(model, declared)
                    diags.append(_warn(smap, (*path, "match", "model", j),
                                       f"no backend declares model {model!r}, so `to: by-model` finds nothing for it{hint}"))
        for j, lim in enumerate(r.limits):
            if lim not in limits:
                diags.append(smap.diag((*path, "limits", j), f"unknown limit policy {lim!r}{did_you_mean(lim, limits)}"))
        for j, key in enumerate(r.match.keys):
            if key not in key_names:
                diags.append(smap.diag((*path, "match", "keys", j), f"unknown client key {key!r}{did_you_mean(key, key_names)}"))
        pt = r.match.prompt_tokens
        if pt and pt.min is not None and pt.max is not None and pt.min > pt.max:
            diags.append(smap.diag((*path, "match", "prompt_tokens"), f"empty range: min {pt.min} is greater than max {pt.max}"))


def _check_windows(spec: m.Spec, smap: SourceMap, i: int, r: m.Route, diags: list[Diagnostic]) -> None:
    assert r.to != "by-model"
    largest: tuple[str, int] | None = None
    pt = r.match.prompt_tokens
    for j, target in enumerate(r.to):
        b = spec.backends.get(target)
        if b is None or b.context_window is None:
            continue
        if largest and b.context_window < largest[1]:
            diags.append(_warn(smap, ("routes", i, "to", j),
                               f"falls back from {largest[0]!r} (context window {largest[1]}) to {target!r} "
                               f"(context window {b.context_window}): long prompts will fail there"))
        if pt and pt.max is not None and pt.max > b.context_window:
            diags.append(_warn(smap, ("routes", i, "to", j),
                               f"prompts up to {pt.max} tokens are routed to {target!r}, whose context window is {b.context_window}"))
        if largest is None or b.context_window > largest[1]:
            largest = (target, b.context_window)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _only_model(mt: m.Match) -> bool:
    return mt.model_copy(update={"model": []}) == m.Match.model_validate({})


class _Coverage:
    """Models already taken by earlier routes whose only condition is the model (or no
    condition at all). Lookups are O(1) for exact names and one regex search for globs."""

    def __init__(self) -> None:
        self.catch_all: int | None = None
        self.exact: dict[str, int] = {}
        self.globs: dict[str, int] = {}
        self._glob_re: re.Pattern[str] | None = None

    def add(self, index: int, patterns: list[str]) -> None:
        if not patterns or "*" in patterns:
            if self.catch_all is None:
                self.catch_all = index
            return
        for p in patterns:
            if _is_glob(p):
                if p not in self.globs:
                    self.globs[p] = index
                    self._glob_re = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in self.globs))
            else:
                self.exact.setdefault(p, index)

    def covering(self, patterns: list[str]) -> set[int] | None:
        """Indexes of the earlier routes that together take every model ``patterns`` accept, or None."""
        if self.catch_all is not None:
            return {self.catch_all}
        if not patterns:
            return None
        found: set[int] = set()
        for p in patterns:
            if p in self.globs:
                found.add(self.globs[p])
            elif _is_glob(p):
                return None
            else:
                first = [self.exact[p]] if p in self.exact else []
                if self._glob_re is not None and self._glob_re.match(p):
                    first.append(next(i for g, i in self.globs.items() if fnmatch.fnmatchcase(p, g)))
                if not first:
                    return None
                found.add(min(first))
        return found


def _check_shadowing(spec: m.Spec, smap: SourceMap, diags: list[Diagnostic]) -> None:
    """Warn about routes no request can reach. One pass: O(routes), not O(routes²)."""
    seen: dict[str, int] = {}
    coverage = _Coverage()
    for j, later in enumerate(spec.routes):
        key = later.match.model_dump_json()
        covering = coverage.covering(later.match.model)
        if key in seen and not covering:
            i = seen[key]
            how = f"route {spec.routes[i].name!r} (routes[{i}]) has the same conditions"
        elif covering and len(covering) == 1:
            i = covering.pop()
            how = f"route {spec.routes[i].name!r} (routes[{i}]) matches every request this one matches"
        elif covering:
            names = ", ".join(repr(spec.routes[i].name) for i in sorted(covering))
            how = f"routes {names} together match every request this one matches"
        else:
            how = ""
        if how:
            diags.append(_warn(smap, ("routes", j, "name"), f"route {later.name!r} can never match: {how}"))
        seen.setdefault(key, j)
        if _only_model(later.match):
            coverage.add(j, later.match.model)


def _check_auth(spec: m.Spec, smap: SourceMap, diags: list[Diagnostic]) -> None:
    limits = list(spec.policies.limits)
    declared = {model for b in spec.backends.values() for model in b.models}
    explicit = [r.match.model for r in spec.routes if r.to != "by-model"]

    def served(model: str) -> bool:
        return model in declared or any(not pats or any(fnmatch.fnmatchcase(model, p) for p in pats) for pats in explicit)

    known = sorted(declared | {p for pats in explicit for p in pats if not _is_glob(p)})
    names: dict[str, int] = {}
    values: dict[str, int] = {}
    for i, k in enumerate(spec.auth.keys):
        path = ("auth", "keys", i)
        if k.name in names:
            diags.append(smap.diag((*path, "name"), f"duplicate client key name {k.name!r} (also auth.keys[{names[k.name]}])"))
        names.setdefault(k.name, i)
        secret = k.key.get_secret_value() if k.key is not None else ""
        if secret and secret in values:
            diags.append(smap.diag((*path, "key"), f"key {k.name!r} has the same value as auth.keys[{values[secret]}]"))
        if secret:
            values.setdefault(secret, i)
        for j, lim in enumerate(k.limits):
            if lim not in limits:
                diags.append(smap.diag((*path, "limits", j), f"unknown limit policy {lim!r}{did_you_mean(lim, limits)}"))
        for j, model in enumerate(k.models):
            if not _is_glob(model) and not served(model):
                diags.append(_warn(smap, (*path, "models", j),
                                   f"key {k.name!r} allows model {model!r}, which no backend or route serves{did_you_mean(model, known)}"))


def _check_state(spec: m.Spec, smap: SourceMap, env: Mapping[str, str], diags: list[Diagnostic]) -> None:
    has_url = bool(env.get("REDIS_URL") or spec.state.redis_url)
    if spec.state.store == "redis" and not has_url:
        diags.append(smap.diag(("state", "store"), "store: redis needs redis_url (or the REDIS_URL environment variable)"))
    cache = spec.policies.cache
    if cache is not None and cache.store == "redis" and not has_url:
        diags.append(smap.diag(("policies", "cache", "store"), "store: redis needs state.redis_url (or the REDIS_URL environment variable)"))


def _check_unused(spec: m.Spec, smap: SourceMap, diags: list[Diagnostic]) -> None:
    if any(r.to == "by-model" for r in spec.routes):
        return
    used = {t for r in spec.routes if r.to != "by-model" for t in r.to}
    for name in spec.backends:
        if name not in used:
            diags.append(_warn(smap, ("backends", name), f"backend {name!r} is never routed to (no route lists it and none uses `to: by-model`)", key=True))
