"""The ``iir.yaml`` spec as pydantic v2 models.

Every field carries a description: it is the reference documentation (``iir schema`` and
docs/reference/spec.md are generated from it, and a test fails when one is missing).
Secrets are ``SecretStr`` so they never show in reprs, logs or dumps.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from iir.spec.units import Duration, Rate, Size

__all__ = [
    "BACKEND_KINDS",
    "CLOUD_KINDS",
    "AgentsSettings",
    "Auth",
    "Backend",
    "CacheOverride",
    "CachePolicy",
    "ClientKey",
    "CloudBackend",
    "HealthPolicy",
    "LimitPolicy",
    "LogSettings",
    "Match",
    "Policies",
    "Price",
    "Route",
    "SelfHostedBackend",
    "SemanticRule",
    "Server",
    "Spec",
    "State",
    "Timeouts",
    "TokenRange",
]

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"
CLOUD_KINDS = ("openai", "anthropic", "google", "openrouter", "grok", "venice")
SELF_HOSTED_KINDS = ("agent", "vllm", "llm-d", "openai-compatible")
BACKEND_KINDS = SELF_HOSTED_KINDS + CLOUD_KINDS
STRATEGIES = ("priority", "weighted", "least-loaded", "lowest-latency", "cheapest", "affinity")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _listify(value: object) -> object:
    return [value] if isinstance(value, str) else value


def _one_or_many(schema: dict[str, Any]) -> None:
    """JSON Schema of a field that accepts one string or a list of them (see ``_listify``)."""
    if schema.get("type") == "array":
        items = schema.pop("items")
        del schema["type"]
        schema["anyOf"] = [items, {"type": "array", "items": items}]
    elif "anyOf" in schema:
        schema["anyOf"].insert(0, {"type": "string"})


class LogSettings(_Model):
    """How the router logs: one structured event per request, plus lifecycle events."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Minimum level written. The LOG_LEVEL environment variable overrides it.")
    format: Literal["json", "text"] = Field(
        "json", description="`json`: one JSON object per line (for collectors); `text`: human-readable lines.")
    file: str | None = Field(
        None, description="Also write the log to this file, rotated daily. Stdout is always written.")
    retention: int = Field(7, ge=1, description="How many rotated daily log files to keep.")


class Server(_Model):
    """The HTTP listener and its process model."""

    listen: str = Field("127.0.0.1:8000", description="Address and port to listen on, `HOST:PORT`.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes sharing the port (SO_REUSEPORT).")
    max_body: Size = Field(4 * 1024 * 1024, description="Largest accepted request body (e.g. `4MiB`); larger bodies get 413.")
    drain_timeout: Duration = Field(30.0, description="On SIGTERM/Ctrl-C, how long in-flight requests may finish before exit.")
    body_timeout: Duration = Field(30.0, gt=0, description="How long a client may take to send its request body once its headers have arrived; a slower or stalled upload gets 408 `request_timeout`. On SIGTERM/Ctrl-C, requests still sending their body get 408 at once.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging settings.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        _host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen must be HOST:PORT, got {v!r}")
        return v


class State(_Model):
    """Where shared state lives: cache entries, rate-limit counters, agent heartbeats."""

    store: Literal["memory", "redis"] = Field(
        "memory", description="`memory`: in-process (one router, no Redis needed). `redis`: shared by all replicas.")
    redis_url: str | None = Field(
        None, description="Redis URL when `store: redis` (e.g. `redis://127.0.0.1:6379/0`); REDIS_URL overrides it.")
    registry: str = Field("iir.db", description="Path of the SQLite registry file; SQLITE_DB_PATH overrides it.")
    fail_mode: Literal["open", "closed"] = Field(
        "open", description="When Redis is unreachable: `open` lets requests through uncounted, `closed` rejects them with 503.")


class ClientKey(_Model):
    """A client API key allowed to call the router."""

    name: str = Field(..., pattern=NAME_RE, description="Name of the key, used in logs and metrics (the key itself never is).")
    key: SecretStr | None = Field(
        ..., description="The key value; give it as `${VAR}` so it comes from the environment. A key whose variable is empty (`${VAR:-}`) is disabled.")
    models: list[str] = Field(["*"], description="Models this key may request (globs such as `local/*`).",
                              json_schema_extra=_one_or_many)
    limits: list[str] = Field([], description="Names of rate-limit policies (under `policies.limits`) applied to this key.",
                              json_schema_extra=_one_or_many)

    _split = field_validator("models", "limits", mode="before")(lambda cls, v: _listify(v))


class Auth(_Model):
    """Who may call the router and its admin API."""

    admin_token: SecretStr | None = Field(
        None, description="Bearer token for `/admin/`; without it the admin API answers only on loopback.")
    keys: list[ClientKey] = Field([], description="Client keys. With none, the router is open to anyone who can reach it.")


class Timeouts(_Model):
    """Time limits for one upstream attempt."""

    connect: Duration = Field(5.0, description="Time to open the TCP/TLS connection.")
    first_byte: Duration = Field(60.0, description="Time from sending the request to the first response byte; for a stream, to its first line that is not an SSE keep-alive comment. Until then a failure falls back to the next candidate.")
    idle: Duration = Field(60.0, description="Longest silence between two chunks of a streamed response.")
    total: Duration = Field(600.0, description="Whole attempt, first byte to last.")


class Price(_Model):
    """Declared price of a model, in US dollars per million tokens."""

    input: float = Field(..., ge=0, description="Dollars per million prompt tokens.")
    output: float = Field(..., ge=0, description="Dollars per million completion tokens.")


def _model_name(value: str) -> str:
    if not value or len(value) > 256 or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"invalid model name {value!r}: 1 to 256 printable characters, no spaces")
    return value


#: A model name as clients send it or as an upstream expects it (``llama-3.1-8b``, ``org/model:tag``).
ModelName = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_model_name)]


class _BackendBase(_Model):
    models: list[ModelName] = Field(..., min_length=1, description="Model names this backend serves, as clients ask for them.")
    model_map: dict[str, ModelName] = Field(
        {}, description="Client model name → the name sent upstream, where they differ.")
    context_window: int | None = Field(None, ge=1, description="Largest prompt + completion, in tokens.")
    price: dict[str, Price] = Field({}, description="Price per model, for the `cheapest` strategy and cost logs.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Per-attempt time limits.")
    max_inflight: int | None = Field(None, ge=1, description="Most concurrent requests sent to this backend; beyond it requests queue briefly, then fall back.")
    headers: dict[str, str] = Field({}, description="Extra HTTP headers sent upstream with every request.")
    capabilities: list[Literal["tools", "images", "json"]] = Field(
        ["tools", "json"], description="What the backend supports; requests needing more skip it.")
    weight: float = Field(1.0, gt=0, description="Relative share of traffic for the `weighted` strategy.")
    stream_usage: bool = Field(
        True, description="OpenAI-compatible kinds: on streams, ask upstream for token usage "
        "(`stream_options.include_usage`) even when the client did not, so rate limits, logs and metrics see "
        "completion tokens (the extra usage chunk is not passed to such a client). Set false for a server "
        "that rejects `stream_options`. Ignored by agent, anthropic and google backends.")


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable ``http(s)://host[:port][/path]`` base URL, or None."""
    if not re.match(r"^https?://[^\s/]+", url) or any(c.isspace() for c in url):
        return f"must start with http:// or https:// and contain no spaces, got {url!r}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as e:
        return f"is not a valid URL ({e}): {url!r}"
    if not parts.hostname:
        return f"has no host: {url!r}"
    return None


class SelfHostedBackend(_BackendBase):
    """A server you run: an iir agent, vLLM, an llm-d cluster or any OpenAI-compatible URL."""

    kind: Literal["agent", "vllm", "llm-d", "openai-compatible"] = Field(..., description="Wire protocol and defaults of this backend.")
    url: str | None = Field(
        None, description="Base URL (for vLLM and OpenAI-compatible servers usually ending in `/v1`). llm-d defaults to LLMD_ENDPOINT.")
    api_key: SecretStr | None = Field(None, description="Bearer token sent upstream, if the server wants one.")

    @model_validator(mode="after")
    def _url_required(self) -> SelfHostedBackend:
        if self.url is None and self.kind != "llm-d":
            raise ValueError(f"a backend of kind {self.kind!r} needs a url")
        if self.url is not None and (problem := url_problem(self.url)):
            raise ValueError(f"url {problem}")
        return self


class CloudBackend(_BackendBase):
    """A hosted provider; base URL and key variable come from the provider's preset."""

    kind: Literal["openai", "anthropic", "google", "openrouter", "grok", "venice"] = Field(..., description="Which provider.")
    url: str | None = Field(None, description="Override the provider's base URL (also `<PROVIDER>_BASE_URL`).")
    api_key: SecretStr | None = Field(
        None, description="Provider key as `${VAR}`; defaults to `EXTERNAL_<PROVIDER>_KEY`. Missing → backend reported unconfigured and skipped.")

    @model_validator(mode="after")
    def _url_valid(self) -> CloudBackend:
        if self.url is not None and (problem := url_problem(self.url)):
            raise ValueError(f"url {problem}")
        return self


Backend = Annotated[SelfHostedBackend | CloudBackend, Field(discriminator="kind")]


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"invalid network {value!r}: use CIDR notation such as 10.0.0.0/8 or fd00::/8") from None
    return value


#: A CIDR range (``10.0.0.0/8``, ``::1/128``); a bare address means that one host.
Network = Annotated[str, AfterValidator(_network)]


class AgentsSettings(_Model):
    """Local agents that register themselves with the router."""

    token: SecretStr | None = Field(None, description="Registration token agents must present; without it registration is closed.")
    heartbeat_timeout: Duration = Field(30.0, description="An agent silent for longer is marked stale and not routed to.")
    allow_networks: list[Network] = Field(["127.0.0.0/8", "::1/128"], description="CIDR ranges an agent's registered URL must fall in.")
    allow_schemes: list[Literal["http", "https"]] = Field(["http", "https"], description="URL schemes an agent may register.")
    context_window: int = Field(2048, ge=1, description="Context window assumed for an agent that does not declare one.")


class TokenRange(_Model):
    """An inclusive range of prompt tokens."""

    min: int | None = Field(None, ge=0, description="Smallest prompt size, in tokens.")
    max: int | None = Field(None, ge=0, description="Largest prompt size, in tokens.")


class SemanticRule(_Model):
    """Match prompts that mean much the same as some examples (local embedding model)."""

    examples: list[str] = Field(..., min_length=1, description="Example prompts of this kind.")
    threshold: float = Field(0.6, ge=-1, le=1, description="Least cosine similarity to the nearest example.")


class Match(_Model):
    """Conditions on a request; all given ones must hold."""

    model: list[str] = Field([], description="Requested model names or globs (`*`, `local/*`, `auto`). Empty: any model.",
                             json_schema_extra=_one_or_many)
    prompt_tokens: TokenRange | None = Field(None, description="Prompt size range, counted by the router's token counter.")
    tools: bool | None = Field(None, description="`true`: only requests with tools; `false`: only without.")
    images: bool | None = Field(None, description="`true`: only requests with image inputs; `false`: only without.")
    headers: dict[str, str] = Field({}, description="Request headers that must be present, value as a glob.")
    keys: list[str] = Field([], description="Names of client keys this rule applies to.", json_schema_extra=_one_or_many)
    regex: str | None = Field(None, description="Regular expression searched in the last user message.")
    keywords: list[str] = Field([], description="Any of these words in the last user message (case-insensitive).",
                                json_schema_extra=_one_or_many)
    semantic: SemanticRule | None = Field(None, description="Similarity to example prompts.")

    _split = field_validator("model", "keys", "keywords", mode="before")(lambda cls, v: _listify(v))

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"invalid regular expression: {e}") from None
        return v


class CacheOverride(_Model):
    """Per-route cache settings, overriding `policies.cache`."""

    enabled: bool = Field(True, description="Cache this route's responses.")
    ttl: Duration | None = Field(None, description="Entry lifetime for this route.")
    deterministic_only: bool | None = Field(
        None, description="Only cache requests with temperature 0 or a seed; unset follows `policies.cache`.")
    max_entry_size: Size | None = Field(None, description="Largest response stored for this route; unset follows `policies.cache`.")
    fields: list[str] | None = Field(
        None, description="Request fields (with the model) that make up this route's cache key; unset follows `policies.cache`.")


class Route(_Model):
    """A routing rule: the first route whose `match` holds handles the request."""

    name: str = Field(..., pattern=NAME_RE, description="Rule name, shown in `x-iir-route`, logs and metrics.")
    match: Match = Field(default_factory=Match, description="Conditions; an empty match catches everything.")
    to: list[str] | Literal["by-model"] = Field(
        ..., description="Ordered fallback list of backend names (`agents` = registered agents), or `by-model`: the backends declaring the requested model.",
        json_schema_extra=_one_or_many)
    strategy: Literal["priority", "weighted", "least-loaded", "lowest-latency", "cheapest", "affinity"] = Field(
        "priority", description="How candidates are ordered: `priority` keeps the list order.")
    affinity_header: str = Field("x-session-id", description="With `affinity`: the header naming the session.")
    cache: bool | CacheOverride | None = Field(None, description="Cache this route (`true`/`false` or settings); unset follows `policies.cache`.")
    limits: list[str] = Field([], description="Rate-limit policies applied to requests on this route.",
                              json_schema_extra=_one_or_many)

    _split = field_validator("limits", mode="before")(lambda cls, v: _listify(v))

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, v: object) -> object:
        if isinstance(v, str) and v != "by-model":
            return [v]
        return v


class CachePolicy(_Model):
    """Exact-match response cache."""

    enabled: bool = Field(True, description="Cache routes that do not say otherwise.")
    store: Literal["memory", "redis"] | None = Field(None, description="Where entries live; defaults to `state.store`.")
    ttl: Duration = Field(300.0, description="Entry lifetime; CACHE_TTL overrides it.")
    deterministic_only: bool = Field(True, description="Only cache requests with temperature 0 or a seed.")
    max_entry_size: Size = Field(1024 * 1024, description="Largest response stored.")
    fields: list[str] = Field(
        ["messages", "prompt", "input", "tools", "tool_choice", "temperature", "top_p", "max_tokens",
         "max_completion_tokens", "stop", "seed", "response_format", "n", "logprobs", "top_logprobs",
         "presence_penalty", "frequency_penalty", "logit_bias", "functions", "function_call"],
        description="Request fields (with the model) that make up the cache key.")


class LimitPolicy(_Model):
    """A named rate limit."""

    per: Literal["key", "model", "backend", "route", "global"] = Field("key", description="What each counter is kept for.")
    requests: Rate | None = Field(None, description="Requests per interval, e.g. `60/min`.")
    tokens: Rate | None = Field(None, description="Tokens (prompt + completion) per interval, e.g. `100k/min`.")
    fail: Literal["open", "closed"] | None = Field(None, description="When the store is down; defaults to `state.fail_mode`.")

    @model_validator(mode="after")
    def _something(self) -> LimitPolicy:
        if self.requests is None and self.tokens is None:
            raise ValueError("a limit needs `requests`, `tokens` or both")
        return self


class HealthPolicy(_Model):
    """Backend health: the circuit breaker and the wait for a `max_inflight` slot."""

    failures: int = Field(5, ge=1, description="Consecutive failed attempts (connect errors, timeouts, 5xx) that open a backend's circuit.")
    cooldown: Duration = Field(30.0, description="How long an open circuit skips the backend before one probe request is let through.")
    queue_timeout: Duration = Field(1.0, description="How long a request waits for a slot on a backend at its `max_inflight`, before falling back to the next candidate.")


class Policies(_Model):
    """Cache, rate-limit and backend-health policies."""

    cache: CachePolicy | None = Field(None, description="Response cache; absent means no caching.")
    limits: dict[str, LimitPolicy] = Field({}, description="Named rate limits, referenced by keys and routes; a limit nothing references applies to every request.")
    health: HealthPolicy = Field(default_factory=HealthPolicy, description="Circuit breaker and concurrency-queue settings for every backend.")


class Spec(_Model):
    """The whole router, declared in one file."""

    version: Literal[1] = Field(..., description="Spec format version; must be 1.")
    server: Server = Field(default_factory=Server, description="HTTP listener and process model.")
    state: State = Field(default_factory=State, description="Shared state store and registry file.")
    auth: Auth = Field(default_factory=Auth, description="Client keys and admin token.")
    backends: dict[Annotated[str, Field(pattern=NAME_RE)], Backend] = Field(
        ..., description="Backends by name.")
    agents: AgentsSettings = Field(default_factory=AgentsSettings, description="Registration of local agents.")
    routes: list[Route] = Field(..., min_length=1, description="Routing rules, first match wins.")
    policies: Policies = Field(default_factory=Policies, description="Cache and rate limits.")
