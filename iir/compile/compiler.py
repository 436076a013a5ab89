"""Pure compiler: validated :class:`~iir.spec.models.Spec` (+ environment) → :class:`RoutingTable`.

No I/O. The environment is passed in explicitly so the function stays pure and testable: it
supplies provider presets (``EXTERNAL_<PROVIDER>_KEY``, ``<PROVIDER>_BASE_URL``,
``LLMD_ENDPOINT``) and the documented overrides (``REDIS_URL``, ``SQLITE_DB_PATH``,
``CACHE_TTL``, ``LOG_LEVEL``).
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import orjson

from iir import table as t
from iir.backends.credentials import PUBLIC_HEADERS, redact_url, url_password
from iir.spec import models as m
from iir.spec.presets import PRESETS
from iir.spec.units import parse_duration

__all__ = ["compile_spec", "table_to_dict"]


def _sha(secret: str | None) -> bytes | None:
    return hashlib.sha256(secret.encode()).digest() if secret else None


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def _normalise_openai_url(url: str, kind: str) -> str:
    url = url.rstrip("/")
    if kind in ("vllm", "llm-d", "openai-compatible") and urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


def _backend(name: str, b: m.SelfHostedBackend | m.CloudBackend, env: Mapping[str, str]) -> t.Backend:
    preset = PRESETS[b.kind]
    url = b.url or (env.get(preset.url_env) if preset.url_env else None) or preset.base_url
    if b.url is None and preset.url_env and env.get(preset.url_env):
        url = env[preset.url_env]
    api_key = _secret(b.api_key) or (env.get(preset.key_env) if preset.key_env else None) or None
    configured, reason = True, ""
    if not url:
        configured, reason = False, f"no URL: set {preset.url_env} or `url`" if preset.url_env else "no URL"
    elif isinstance(b, m.CloudBackend) and not api_key:
        configured, reason = False, f"no API key: set {preset.key_env} or `api_key`"
    if url and preset.protocol == "openai":
        url = _normalise_openai_url(url, b.kind)
    headers = dict(preset.headers)
    headers.update(b.headers)
    return t.Backend(
        name=name, kind=b.kind, protocol=preset.protocol, base_url=(url or "").rstrip("/"),
        models=tuple(b.models), model_map=MappingProxyType(dict(b.model_map)), api_key=api_key,
        headers=tuple(headers.items()), context_window=b.context_window,
        prices=MappingProxyType({k: (p.input, p.output) for k, p in b.price.items()}),
        timeouts=t.Timeouts(b.timeouts.connect, b.timeouts.first_byte, b.timeouts.idle, b.timeouts.total),
        max_inflight=b.max_inflight, capabilities=_capabilities(b), weight=b.weight,
        configured=configured, unconfigured_reason=reason, stream_usage=b.stream_usage,
    )


def _capabilities(b: m.SelfHostedBackend | m.CloudBackend) -> frozenset[str]:
    """Kind agent keeps only what the agent protocol carries (none: no tools, images, JSON mode)."""
    caps = frozenset(b.capabilities)
    return caps & t.AGENT_CAPABILITIES if b.kind == "agent" else caps


def _match(mt: m.Match) -> t.Match:
    exact = frozenset(p for p in mt.model if not t.is_glob(p))
    globs = tuple(p for p in mt.model if t.is_glob(p))
    pt = mt.prompt_tokens
    return t.Match(
        models=exact, model_globs=t.compile_globs(globs), model_patterns=tuple(mt.model),
        prompt_tokens_min=pt.min if pt else None, prompt_tokens_max=pt.max if pt else None,
        tools=mt.tools, images=mt.images,
        headers=tuple((k.lower(), re.compile(t.fnmatch.translate(v))) for k, v in mt.headers.items()),
        keys=frozenset(mt.keys), regex=re.compile(mt.regex) if mt.regex else None,
        keywords=tuple(k.lower() for k in mt.keywords),
        semantic_examples=tuple(mt.semantic.examples) if mt.semantic else (),
        semantic_threshold=mt.semantic.threshold if mt.semantic else 0.6,
    )


def _route(i: int, r: m.Route, cache_default: bool) -> t.Route:
    over: m.CacheOverride | None = None
    if isinstance(r.cache, m.CacheOverride):
        over = r.cache
        cache, ttl = over.enabled, over.ttl
    else:
        cache, ttl = (cache_default if r.cache is None else r.cache), None
    by_model = r.to == "by-model"
    return t.Route(
        name=r.name, index=i, match=_match(r.match), targets=() if by_model else tuple(r.to),
        by_model=by_model, strategy=r.strategy, affinity_header=r.affinity_header.lower(),
        cache=cache, cache_ttl=ttl, limits=tuple(r.limits),
        cache_deterministic_only=over.deterministic_only if over else None,
        cache_max_entry_size=over.max_entry_size if over else None,
        cache_fields=tuple(over.fields) if over and over.fields is not None else None,
    )


def _route_index(routes: tuple[t.Route, ...]) -> tuple[dict[str, tuple[t.Route, ...]], tuple[t.Route, ...]]:
    generic = tuple(r for r in routes if r.match.any_model or r.match.model_globs is not None)
    by_model: dict[str, list[t.Route]] = {}
    for r in routes:
        for name in r.match.models:
            by_model.setdefault(name, []).append(r)
    generic_indexes = [r.index for r in generic]
    merged = {name: _merge_by_index(rs, generic, generic_indexes) for name, rs in by_model.items()}
    return merged, generic


def _merge_by_index(named: list[t.Route], generic: tuple[t.Route, ...], indexes: list[int]) -> tuple[t.Route, ...]:
    """Insert the (few) routes naming a model into the generic routes, keeping spec order and
    dropping a route present in both. Bisect + slices: no per-route Python loop over ``generic``."""
    out: list[t.Route] = []
    start = 0
    for r in named:
        k = bisect.bisect_left(indexes, r.index, lo=start)
        out.extend(generic[start:k])
        out.append(r)
        start = k + 1 if k < len(indexes) and indexes[k] == r.index else k
    out.extend(generic[start:])
    return tuple(out)


def compile_spec(spec: m.Spec, env: Mapping[str, str], source: str = "iir.yaml") -> t.RoutingTable:
    """Compile a validated spec. Deterministic: the same spec and env give an equal table."""
    host, _, port = spec.server.listen.rpartition(":")
    log = spec.server.log
    server = t.ServerSettings(
        host=host.strip("[]"), port=int(port), workers=spec.server.workers, max_body=spec.server.max_body,
        drain_timeout=spec.server.drain_timeout, body_timeout=spec.server.body_timeout, log_level=(env.get("LOG_LEVEL") or log.level).lower(),
        log_format=log.format, log_file=log.file, log_retention=log.retention,
    )
    state = t.StateSettings(
        store=spec.state.store, redis_url=env.get("REDIS_URL") or spec.state.redis_url,
        registry=env.get("SQLITE_DB_PATH") or spec.state.registry, fail_mode=spec.state.fail_mode,
    )
    keys = {}
    for k in spec.auth.keys:
        key_digest = _sha(_secret(k.key))
        if key_digest is not None:
            keys[key_digest] = t.ClientKey(k.name, tuple(k.models), None if "*" in k.models else t.compile_globs(tuple(k.models)), tuple(k.limits))
    auth = t.AuthTable(_sha(_secret(spec.auth.admin_token)), MappingProxyType(keys))
    ag = spec.agents
    agents = t.AgentPolicy(_sha(_secret(ag.token)), ag.heartbeat_timeout, tuple(ag.allow_networks),
                           tuple(ag.allow_schemes), ag.context_window)
    backends = {name: _backend(name, b, env) for name, b in spec.backends.items()}
    model_index: dict[str, list[str]] = {}
    for b in backends.values():
        for model in b.models:
            model_index.setdefault(model, []).append(b.name)
    pc = spec.policies.cache
    cache_ttl = parse_duration(env["CACHE_TTL"]) if env.get("CACHE_TTL") else (pc.ttl if pc else 300.0)
    cache = t.CacheSettings(
        enabled=pc is not None and pc.enabled, store=(pc.store if pc and pc.store else spec.state.store),
        ttl=cache_ttl, deterministic_only=pc.deterministic_only if pc else True,
        max_entry_size=pc.max_entry_size if pc else 1024 * 1024, fields=tuple(pc.fields) if pc else (),
    )
    routes = tuple(_route(i, r, cache.enabled) for i, r in enumerate(spec.routes))
    by_model, generic = _route_index(routes)
    limits = {name: t.LimitSettings(name, lp.per, lp.requests, lp.tokens, lp.fail or spec.state.fail_mode)
              for name, lp in spec.policies.limits.items()}
    draft = t.RoutingTable(
        digest="", source=source, server=server, state=state, auth=auth, agents=agents,
        backends=MappingProxyType(backends), routes=routes,
        model_index=MappingProxyType({k: tuple(v) for k, v in model_index.items()}),
        routes_by_model=MappingProxyType(by_model), generic_routes=generic, cache=cache,
        limits=MappingProxyType(limits),
        health=t.HealthSettings(spec.policies.health.failures, spec.policies.health.cooldown, spec.policies.health.queue_timeout),
    )
    digest = hashlib.sha256(orjson.dumps(table_to_dict(draft, secrets="hash"), option=orjson.OPT_SORT_KEYS)).hexdigest()
    object.__setattr__(draft, "digest", digest)
    return draft


def table_to_dict(table: t.RoutingTable, *, secrets: str = "omit") -> dict[str, Any]:
    """Plain-data form of a table. ``secrets``: ``omit`` (for the registry and admin API) or
    ``hash`` (for the digest, so rotating a key counts as a change without storing it)."""

    def sec(value: bytes | str | None) -> str | None:
        if value is None or secrets == "omit":
            return None if value is None else "<set>"
        raw = value if isinstance(value, bytes) else value.encode()
        return hashlib.sha256(b"iir-digest:" + raw).hexdigest()

    def backend(b: t.Backend) -> dict[str, Any]:
        return {
            "name": b.name, "kind": b.kind, "protocol": b.protocol,
            "base_url": redact_url(b.base_url, sec(url_password(b.base_url)) or ""),  # basic-auth password
            "models": list(b.models), "model_map": dict(b.model_map), "api_key": sec(b.api_key),
            # header values may be credentials (x-api-key, Authorization: Bearer ...): only
            # the known public ones (protocol versions, attribution) are kept as written
            "headers": [[k, v if k.lower() in PUBLIC_HEADERS else sec(v)] for k, v in b.headers],
            "context_window": b.context_window,
            "prices": {k: list(v) for k, v in b.prices.items()},
            "timeouts": [b.timeouts.connect, b.timeouts.first_byte, b.timeouts.idle, b.timeouts.total],
            "max_inflight": b.max_inflight, "capabilities": sorted(b.capabilities), "weight": b.weight,
            "configured": b.configured, "unconfigured_reason": b.unconfigured_reason,
            **({} if b.stream_usage else {"stream_usage": False}),  # absent when default: digests stay
        }

    def route(r: t.Route) -> dict[str, Any]:
        mt = r.match
        cache_over = {k: v for k, v in (("deterministic_only", r.cache_deterministic_only),
                                        ("max_entry_size", r.cache_max_entry_size),
                                        ("fields", list(r.cache_fields) if r.cache_fields is not None else None))
                      if v is not None}
        return {
            "name": r.name, "targets": list(r.targets), "by_model": r.by_model, "strategy": r.strategy,
            "affinity_header": r.affinity_header, "cache": r.cache, "cache_ttl": r.cache_ttl,
            **({"cache_override": cache_over} if cache_over else {}),  # absent when unused: digests stay
            "limits": list(r.limits),
            "match": {
                "model": list(mt.model_patterns), "prompt_tokens": [mt.prompt_tokens_min, mt.prompt_tokens_max],
                "tools": mt.tools, "images": mt.images,
                "headers": [[k, p.pattern] for k, p in mt.headers], "keys": sorted(mt.keys),
                "regex": mt.regex.pattern if mt.regex else None, "keywords": list(mt.keywords),
                "semantic": {"examples": list(mt.semantic_examples), "threshold": mt.semantic_threshold}
                if mt.semantic_examples else None,
            },
        }

    s, st, a = table.server, table.state, table.agents
    return {
        "server": {"host": s.host, "port": s.port, "workers": s.workers, "max_body": s.max_body,
                   "drain_timeout": s.drain_timeout, "log": [s.log_level, s.log_format, s.log_file, s.log_retention],
                   **({} if s.body_timeout == 30.0 else {"body_timeout": s.body_timeout})},  # absent when default: digests stay
        "state": {"store": st.store, "redis_url": sec(st.redis_url) if st.redis_url else None,
                  "registry": st.registry, "fail_mode": st.fail_mode},
        "auth": {"admin_token": sec(table.auth.admin_token_sha256),
                 "keys": sorted(([sec(d), k.name, list(k.models), list(k.limits)]
                                 for d, k in table.auth.keys_by_sha256.items()), key=lambda x: x[1])},
        "agents": {"token": sec(a.token_sha256), "heartbeat_timeout": a.heartbeat_timeout,
                   "allow_networks": list(a.allow_networks), "allow_schemes": list(a.allow_schemes),
                   "context_window": a.context_window},
        "backends": [backend(b) for b in table.backends.values()],
        "routes": [route(r) for r in table.routes],
        "cache": {"enabled": table.cache.enabled, "store": table.cache.store, "ttl": table.cache.ttl,
                  "deterministic_only": table.cache.deterministic_only,
                  "max_entry_size": table.cache.max_entry_size, "fields": list(table.cache.fields)},
        "limits": {n: {"per": lm.per, "requests": list(lm.requests) if lm.requests else None,
                       "tokens": list(lm.tokens) if lm.tokens else None, "fail": lm.fail}
                   for n, lm in table.limits.items()},
        "health": {"failures": table.health.failures, "cooldown": table.health.cooldown,
                   "queue_timeout": table.health.queue_timeout},
    }
