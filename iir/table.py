"""Compiled, immutable routing table: what the router consults on every request.

Built once per spec load by :func:`iir.compile.compiler.compile_spec`; never mutated.
A request pins the table it started with, so a reload (one reference swap) never mixes
two specs inside a request. No I/O here.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "AGENT_CAPABILITIES",
    "AgentPolicy",
    "AuthTable",
    "Backend",
    "CacheSettings",
    "ClientKey",
    "HealthSettings",
    "LimitSettings",
    "Match",
    "Route",
    "RoutingTable",
    "ServerSettings",
    "StateSettings",
    "Timeouts",
    "compile_globs",
]

#: What a backend of kind ``agent`` (static or registered) can take: the agent protocol
#: (``/infer``) carries plain text in and out, so requests needing tools, image input or JSON
#: mode (``response_format``) must skip it, whatever capabilities it declares.
AGENT_CAPABILITIES: frozenset[str] = frozenset()



def compile_globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex for a set of globs (``None`` if empty). Case-sensitive, anchored."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 60.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class Backend:
    """One upstream. ``protocol`` selects the adapter: openai | agent | anthropic | gemini."""

    name: str
    kind: str
    protocol: str
    base_url: str
    models: tuple[str, ...]
    model_map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    api_key: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    context_window: int | None = None
    prices: Mapping[str, tuple[float, float]] = field(default_factory=lambda: MappingProxyType({}))
    timeouts: Timeouts = Timeouts()
    max_inflight: int | None = None
    capabilities: frozenset[str] = frozenset({"tools", "json"})
    weight: float = 1.0
    configured: bool = True
    unconfigured_reason: str = ""
    dynamic: bool = False  # a registered agent rather than a spec backend
    #: OpenAI-family streams: ask upstream for usage (``stream_options.include_usage``) even
    #: when the client did not, so limits and logs see completion tokens
    stream_usage: bool = True
    #: ``models`` as a set: membership in O(1) however many models a backend declares
    model_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_set", frozenset(self.models))

    def upstream_model(self, requested: str) -> str:
        """The model name to send upstream for a client's requested name."""
        if requested in self.model_map:
            return self.model_map[requested]
        if requested in self.model_set:
            return requested
        first = self.models[0]
        return self.model_map.get(first, first)

    def serves(self, model: str) -> bool:
        return model in self.model_set


@dataclass(frozen=True, slots=True)
class Match:
    """Compiled conditions. ``models`` are exact names, ``model_globs`` a compiled pattern."""

    models: frozenset[str] = frozenset()
    model_globs: re.Pattern[str] | None = None
    model_patterns: tuple[str, ...] = ()  # as written, for explain/registry
    prompt_tokens_min: int | None = None
    prompt_tokens_max: int | None = None
    tools: bool | None = None
    images: bool | None = None
    headers: tuple[tuple[str, re.Pattern[str]], ...] = ()  # lower-case name, value pattern
    keys: frozenset[str] = frozenset()
    regex: re.Pattern[str] | None = None
    keywords: tuple[str, ...] = ()  # lower-case
    semantic_examples: tuple[str, ...] = ()
    semantic_threshold: float = 0.6

    @property
    def any_model(self) -> bool:
        return not self.model_patterns

    def model_matches(self, model: str) -> bool:
        if not self.model_patterns or model in self.models:
            return True
        return self.model_globs is not None and self.model_globs.match(model) is not None


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    index: int
    match: Match
    targets: tuple[str, ...]  # backend names in fallback order; "agents" = registered agents
    by_model: bool = False
    strategy: str = "priority"
    affinity_header: str = "x-session-id"
    cache: bool = False
    cache_ttl: float | None = None
    limits: tuple[str, ...] = ()
    # per-route overrides of policies.cache (None: follow it)
    cache_deterministic_only: bool | None = None
    cache_max_entry_size: int | None = None
    cache_fields: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ClientKey:
    name: str
    models: tuple[str, ...]
    models_re: re.Pattern[str] | None
    limits: tuple[str, ...] = ()

    def allows(self, model: str) -> bool:
        return self.models_re is None or self.models_re.match(model) is not None


@dataclass(frozen=True, slots=True)
class AuthTable:
    """Keys indexed by the SHA-256 of their value: lookup by digest is timing-safe."""

    admin_token_sha256: bytes | None = field(default=None, repr=False)
    keys_by_sha256: Mapping[bytes, ClientKey] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @property
    def open(self) -> bool:
        return not self.keys_by_sha256


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_body: int = 4 * 1024 * 1024
    drain_timeout: float = 30.0
    body_timeout: float = 30.0
    log_level: str = "info"
    log_format: str = "json"
    log_file: str | None = None
    log_retention: int = 7


@dataclass(frozen=True, slots=True)
class StateSettings:
    store: str = "memory"
    redis_url: str | None = field(default=None, repr=False)
    registry: str = "iir.db"
    fail_mode: str = "open"


@dataclass(frozen=True, slots=True)
class AgentPolicy:
    token_sha256: bytes | None = field(default=None, repr=False)
    heartbeat_timeout: float = 30.0
    allow_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    allow_schemes: tuple[str, ...] = ("http", "https")
    context_window: int = 2048


@dataclass(frozen=True, slots=True)
class CacheSettings:
    enabled: bool = False
    store: str = "memory"
    ttl: float = 300.0
    deterministic_only: bool = True
    max_entry_size: int = 1024 * 1024
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthSettings:
    failures: int = 5  # consecutive failures that open a circuit
    cooldown: float = 30.0  # seconds open before a half-open probe
    queue_timeout: float = 1.0  # wait for a max_inflight slot


@dataclass(frozen=True, slots=True)
class LimitSettings:
    name: str
    per: str
    requests: tuple[int, float] | None
    tokens: tuple[int, float] | None
    fail: str


@dataclass(frozen=True, eq=False)
class RoutingTable:
    """Everything the request path needs, compiled. Equal and hashed by ``digest``."""

    digest: str
    source: str
    server: ServerSettings
    state: StateSettings
    auth: AuthTable
    agents: AgentPolicy
    backends: Mapping[str, Backend]
    routes: tuple[Route, ...]
    model_index: Mapping[str, tuple[str, ...]]  # model → backends declaring it, in spec order
    routes_by_model: Mapping[str, tuple[Route, ...]]  # model named exactly → its candidate routes, in order
    generic_routes: tuple[Route, ...]  # routes with globs or no model condition, in order
    cache: CacheSettings
    limits: Mapping[str, LimitSettings]
    health: HealthSettings = HealthSettings()

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RoutingTable) and other.digest == self.digest

    def routes_for(self, model: str) -> tuple[Route, ...]:
        """Routes that may match ``model``, in spec order. O(1): merged at compile time."""
        return self.routes_by_model.get(model, self.generic_routes)

    @property
    def models(self) -> tuple[str, ...]:
        """Every model a client can ask for: declared backend models plus exact route models."""
        names = dict.fromkeys(self.model_index)
        for name in self.routes_by_model:
            names.setdefault(name, None)
        return tuple(names)
