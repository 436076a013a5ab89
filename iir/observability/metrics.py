"""Prometheus metrics, one :class:`Metrics` object per application (no module globals).

Every metric lives in the object's own :class:`CollectorRegistry`. With ``--workers N`` the
serve command sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports prometheus_client;
metric values then live in per-process mmap files and ``/metrics`` merges them
(:mod:`iir.server.metrics_api`). Gauges declare how workers' values combine.

This is on the request hot path: label children are cached in dicts keyed by label tuples, so a
request costs a few dict lookups and ``inc``/``observe`` calls. Label values are bounded: models
a client invents are folded into ``other`` (see :meth:`Metrics.model_label`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics_core import InfoMetricFamily, Metric

from iir.table import RoutingTable

__all__ = [
    "DURATION_BUCKETS",
    "METRICS_KEY",
    "NONE",
    "OTHER",
    "OVERHEAD_BUCKETS",
    "TTFT_BUCKETS",
    "Metrics",
    "RequestSample",
    "multiprocess_dir",
]

# LLM requests last from milliseconds (cache hits) to minutes (long generations).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                    120.0, 300.0, 600.0)
# First tokens arrive in tens of milliseconds on a warm GPU, seconds on a loaded one or a CPU.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
# Time spent inside the router itself: sub-millisecond when healthy.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

NONE = "none"  # label value for "not known for this request" (e.g. no route before a 401)
OTHER = "other"  # label value for a model name the spec does not declare
_MAX_EXTRA_MODELS = 100  # undeclared model names served successfully, labelled as themselves


def multiprocess_dir() -> str | None:
    """The multiprocess directory when running with several workers, else ``None``."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass(slots=True)
class RequestSample:
    """What one finished request contributes to the metrics (built by the observe stage)."""

    model: str
    route: str
    backend: str
    status: int
    seconds: float
    ttft: float | None
    overhead: float
    prompt_tokens: int
    completion_tokens: int
    cache: str
    ratelimit: str
    key: str
    error: str
    attempts: tuple[tuple[str, str], ...]  # (backend, outcome) per upstream try; outcome "ok" or error


class _SpecInfo:
    """Custom collector for ``iir_spec_info``: the spec this process serves (Info metrics have no
    multiprocess mode, so the scraping process reports its own, which every worker reloads)."""

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}

    def collect(self) -> Iterator[Metric]:
        family = InfoMetricFamily("iir_spec", "The loaded spec: its hash (digest) and source file.")
        if self.labels:
            family.add_metric([], self.labels)
        yield family

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class Metrics:
    """All of iir's metrics for one application."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiprocess = multiprocess_dir() is not None
        if self.multiprocess and not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError("PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported; "
                               "set it before the worker processes import iir")
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        req = ("model", "route", "backend")
        self.requests = Counter("iir_requests", "Requests answered, by requested model, route, backend and HTTP status.",
                                [*req, "status"], registry=r)
        self.errors = Counter("iir_request_errors", "Requests that failed, by error code (includes failures mid-stream).",
                              ["code"], registry=r)
        self.duration = Histogram("iir_request_duration_seconds", "Time from request received to response finished.",
                                  req, buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram("iir_time_to_first_token_seconds",
                              "Streaming requests: time from request received to the first byte sent to the client.",
                              req, buckets=TTFT_BUCKETS, registry=r)
        self.overhead = Histogram("iir_router_overhead_seconds",
                                  "Time spent inside the router per request, excluding waiting on upstreams.",
                                  buckets=OVERHEAD_BUCKETS, registry=r)
        self.tokens = Counter("iir_tokens", "Tokens processed, by model, backend and type (prompt | completion).",
                              ["model", "backend", "type"], registry=r)
        self.cache = Counter("iir_cache_requests", "Cache lookups by route and result (hit | miss | bypass).",
                             ["route", "result"], registry=r)
        self.ratelimit = Counter("iir_rate_limit_decisions",
                                 "Rate-limit decisions by client key name and result (ok | limited | fail-open | fail-closed).",
                                 ["key", "result"], registry=r)
        self.attempts = Counter("iir_upstream_attempts", "Upstream tries by backend and outcome (ok or the error).",
                                ["backend", "outcome"], registry=r)
        self.fallbacks = Counter("iir_fallbacks", "Times a route moved on from a failed backend to the next candidate.",
                                 ["route", "backend", "reason"], registry=r)
        self.in_flight = Gauge("iir_requests_in_flight", "Requests being processed.", registry=r,
                               multiprocess_mode="livesum")
        self.backend_in_flight = Gauge("iir_backend_in_flight", "Upstream requests open, by backend.", ["backend"],
                                       registry=r, multiprocess_mode="livesum")
        self.backend_healthy = Gauge("iir_backend_healthy", "1 when the backend is routable (circuit closed), else 0.",
                                     ["backend"], registry=r, multiprocess_mode="livemin")
        self.agent_queue = Gauge("iir_agent_queue_length", "Queue length each agent reported in its last heartbeat.",
                                 ["agent"], registry=r, multiprocess_mode="livemax")
        self.agents = Gauge("iir_agents", "Registered agents by state (live | stale).", ["state"], registry=r,
                            multiprocess_mode="livemax")
        self.agent_events = Counter("iir_agent_events", "Agent registrations and heartbeat expiries.", ["event"],
                                    registry=r)
        self.reloads = Counter("iir_config_reloads", "Spec (re)loads by result (success | failure).", ["result"],
                               registry=r)
        self.spec_loaded_time = Gauge("iir_spec_loaded_timestamp_seconds", "Unix time the current spec was loaded.",
                                 registry=r, multiprocess_mode="livemax")
        self._spec_info = _SpecInfo()
        self.spec_loaded_at: float | None = None
        if not self.multiprocess:
            r.register(self._spec_info)  # type: ignore[arg-type]
        self._request_children: dict[tuple[str, str, str, int], tuple[Any, Any, Any, Any, Any]] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._models_table: RoutingTable | None = None
        self._models: frozenset[str] = frozenset()
        self._extra_models: set[str] = set()
        self._unconfigured: set[str] = set()
        for result in ("success", "failure"):
            self.reloads.labels(result)  # present (at 0) from the start: rate() needs a first sample

    # -- the hot path --------------------------------------------------------------------------

    def model_label(self, table: RoutingTable, model: str, ok: bool) -> str:
        """The requested model as a bounded label: declared names as they are; undeclared names
        that were served successfully (routes with globs) up to a cap; everything else ``other``."""
        if table is not self._models_table:
            self._models = frozenset(table.models)
            self._models_table = table
        if model in self._models or model in self._extra_models:
            return model
        if not model:
            return NONE
        if ok and len(self._extra_models) < _MAX_EXTRA_MODELS:
            self._extra_models.add(model)
            return model
        return OTHER

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, s: RequestSample) -> None:
        """Record one finished request."""
        key = (s.model, s.route, s.backend, s.status)
        children = self._request_children.get(key)
        if children is None:
            labels = (s.model, s.route, s.backend)
            children = self._request_children[key] = (
                self.requests.labels(*labels, str(s.status)), self.duration.labels(*labels),
                self.ttft.labels(*labels), self.tokens.labels(s.model, s.backend, "prompt"),
                self.tokens.labels(s.model, s.backend, "completion"))
        count, duration, ttft, tok_in, tok_out = children
        count.inc()
        duration.observe(s.seconds)
        if s.ttft is not None:
            ttft.observe(s.ttft)
        if s.prompt_tokens:
            tok_in.inc(s.prompt_tokens)
        if s.completion_tokens:
            tok_out.inc(s.completion_tokens)
        self.overhead.observe(s.overhead)
        if s.error:
            self._child(self.errors, (s.error,)).inc()
        if s.cache != "off":
            self._child(self.cache, (s.route, s.cache)).inc()
        if s.ratelimit != "off":
            self._child(self.ratelimit, (s.key, s.ratelimit)).inc()
        if s.attempts:
            last = len(s.attempts) - 1
            for i, (backend, outcome) in enumerate(s.attempts):
                self._child(self.attempts, (backend, outcome)).inc()
                if i < last:
                    self._child(self.fallbacks, (s.route, backend, outcome)).inc()

    # -- hooks for the router, the policies and the agent registry -------------------------------

    def backend_inflight(self, backend: str) -> Any:
        """The in-flight gauge child of a backend: ``.inc()`` before an upstream call, ``.dec()`` after."""
        return self._child(self.backend_in_flight, (backend,))

    def set_backend_health(self, backend: str, healthy: bool) -> None:
        self._child(self.backend_healthy, (backend,)).set(1.0 if healthy else 0.0)

    def set_agent_queue(self, agent: str, length: int) -> None:
        self._child(self.agent_queue, (agent,)).set(length)

    def set_agents(self, live: int, stale: int) -> None:
        self._child(self.agents, ("live",)).set(live)
        self._child(self.agents, ("stale",)).set(stale)

    def agent_event(self, event: str) -> None:
        """``registered`` or ``heartbeat_expired``."""
        self._child(self.agent_events, (event,)).inc()

    def forget_backends(self, keep: Iterable[str]) -> None:
        """Drop health/in-flight series of backends no longer in the table (after a reload)."""
        kept = set(keep)
        for metric in (self.backend_healthy, self.backend_in_flight):
            for labels in [k for k in self._children if k[0] == id(metric) and k[1] not in kept]:
                del self._children[labels]
                if not self.multiprocess:
                    metric.remove(labels[1])

    def on_spec_loaded(self, table: RoutingTable, *, at: float | None = None) -> None:
        """A spec was loaded (start-up or reload): update the info metric and backend series."""
        self._spec_info.labels = {"digest": table.digest, "source": table.source}
        self.spec_loaded_at = at if at is not None else time.time()
        self.spec_loaded_time.set(self.spec_loaded_at)
        self.forget_backends(table.backends)
        for name, backend in table.backends.items():
            if backend.dynamic:
                continue
            known = (id(self.backend_healthy), name) in self._children
            if not backend.configured:
                self._unconfigured.add(name)
                self.set_backend_health(name, False)
            elif not known or name in self._unconfigured:  # keep the circuit breaker's verdict otherwise
                self._unconfigured.discard(name)
                self.set_backend_health(name, True)

    def reload(self, ok: bool) -> None:
        self._child(self.reloads, ("success" if ok else "failure",)).inc()

    @property
    def spec_collector(self) -> _SpecInfo:
        return self._spec_info


METRICS_KEY = web.AppKey("iir.metrics", Metrics)
