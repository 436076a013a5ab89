"""Backend health and load, per router process: circuit breakers, latency EWMAs, in-flight
counts, concurrency caps and external load signals (agent queues, vLLM /metrics).

One :class:`HealthBoard` per app. The relay reports every attempt (:meth:`HealthBoard.started`,
:meth:`HealthBoard.finished`); the selector reads :meth:`HealthBoard.available` and
:meth:`HealthBoard.load`. Everything here is in memory and per process: a replica learns a
backend is down from its own failures (a few requests), which is the usual trade-off of
client-side circuit breakers (Envoy's outlier detection works the same way).

Circuit breaker: ``failures`` consecutive failures open the circuit for ``cooldown`` seconds;
then one request is let through as a probe (half-open). Its success closes the circuit, its
failure opens it again for another cooldown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from iir.errors import IIRError
from iir.table import Backend

__all__ = [
    "BackendBusyError",
    "BackendStats",
    "CircuitSettings",
    "HealthBoard",
    "MetricsScraper",
    "parse_vllm_metrics",
]

log = logging.getLogger("iir.policies.health")


class BackendBusyError(IIRError):
    """A backend is at its ``max_inflight`` cap and its queue did not free up in time."""

    status = 503
    type = "service_unavailable"
    code = "backend_busy"


@dataclass(frozen=True, slots=True)
class CircuitSettings:
    failures: int = 5  # consecutive failures that open the circuit
    cooldown: float = 30.0  # seconds the circuit stays open before a half-open probe
    queue_timeout: float = 1.0  # how long a request waits for a max_inflight slot
    ewma_alpha: float = 0.3  # weight of the newest sample in latency averages


@dataclass(slots=True)
class BackendStats:
    consecutive_failures: int = 0
    state: str = "closed"  # closed | open | half-open
    opened_at: float = 0.0
    probe_in_flight: bool = False
    inflight: int = 0
    waiting: int = 0  # requests queued for a max_inflight slot
    ewma_ttft: float | None = None
    ewma_latency: float | None = None
    successes: int = 0
    failures: int = 0
    external_queue: float = 0.0  # agent heartbeat queue length or vLLM waiting + running
    external_at: float = 0.0
    slots: asyncio.Semaphore | None = None
    slots_cap: int = 0


class HealthBoard:
    """Per-process health of every backend, keyed by backend name."""

    def __init__(self, settings: CircuitSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_health_change: Callable[[str, bool], None] | None = None,
                 external_ttl: float = 30.0) -> None:
        self.settings = settings or CircuitSettings()
        self._clock = clock
        self._stats: dict[str, BackendStats] = {}
        self._on_change = on_health_change
        self._external_ttl = external_ttl
        #: optional live lookup of a backend's own queue (e.g. the agent directory's heartbeat
        #: ``queue_length``); consulted by :meth:`load` before pushed reports.
        self.queue_source: Callable[[str], float | None] | None = None

    def stats(self, name: str) -> BackendStats:
        s = self._stats.get(name)
        if s is None:
            s = self._stats[name] = BackendStats()
        return s

    def snapshot(self) -> Mapping[str, BackendStats]:
        return dict(self._stats)

    # -- circuit breaker --------------------------------------------------------------------
    def available(self, name: str) -> tuple[bool, str]:
        """Whether ``name`` may be tried now, and why not. Does not reserve the probe."""
        s = self._stats.get(name)
        if s is None or s.state == "closed":
            return True, ""
        remaining = s.opened_at + self.settings.cooldown - self._clock()
        if s.state == "open" and remaining > 0:
            return False, f"circuit open ({s.consecutive_failures} consecutive failures; retry in {remaining:.1f}s)"
        if s.probe_in_flight:
            return False, "circuit half-open: a probe request is in flight"
        return True, "circuit half-open: this request is the probe"

    def started(self, name: str) -> None:
        """An attempt on ``name`` begins (the relay calls this)."""
        s = self.stats(name)
        s.inflight += 1
        if s.state == "open" and self._clock() >= s.opened_at + self.settings.cooldown:
            s.state = "half-open"
        if s.state == "half-open":
            s.probe_in_flight = True

    def finished(self, name: str, ok: bool, *, ttft: float | None = None, seconds: float | None = None) -> None:
        """An attempt on ``name`` ended. ``ok=False`` for connect errors, timeouts and 5xx."""
        s = self.stats(name)
        s.inflight = max(0, s.inflight - 1)
        a = self.settings.ewma_alpha
        if ttft is not None:
            s.ewma_ttft = ttft if s.ewma_ttft is None else a * ttft + (1 - a) * s.ewma_ttft
        if seconds is not None and ok:
            s.ewma_latency = seconds if s.ewma_latency is None else a * seconds + (1 - a) * s.ewma_latency
        was_healthy = s.state == "closed"
        if ok:
            s.successes += 1
            s.consecutive_failures = 0
            s.probe_in_flight = False
            if s.state != "closed":
                log.info("backend %s recovered: circuit closed", name)
            s.state = "closed"
        else:
            s.failures += 1
            s.consecutive_failures += 1
            if s.state == "half-open" or (s.state == "closed" and s.consecutive_failures >= self.settings.failures):
                s.state, s.opened_at, s.probe_in_flight = "open", self._clock(), False
                log.warning("backend %s: circuit open for %.0fs after %d consecutive failures",
                            name, self.settings.cooldown, s.consecutive_failures)
        if self._on_change is not None and was_healthy != (s.state == "closed"):
            self._on_change(name, s.state == "closed")

    def cancelled(self, name: str) -> None:
        """An attempt ended without a verdict (client went away): only the in-flight count changes."""
        s = self.stats(name)
        s.inflight = max(0, s.inflight - 1)
        s.probe_in_flight = False

    # -- load ---------------------------------------------------------------------------------
    def report_queue(self, name: str, queued: float) -> None:
        """External load signal: an agent's heartbeat queue length, vLLM waiting + running."""
        s = self.stats(name)
        s.external_queue, s.external_at = max(0.0, float(queued)), self._clock()

    def load(self, name: str) -> float:
        """In-flight here + queued for a slot here + the backend's own reported queue (if fresh)."""
        live = self.queue_source(name) if self.queue_source is not None else None
        s = self._stats.get(name)
        if s is None:
            return float(live or 0.0)
        if live is not None:
            ext = float(live)
        else:
            ext = s.external_queue if self._clock() - s.external_at <= self._external_ttl else 0.0
        return s.inflight + s.waiting + ext

    def ttft(self, name: str) -> float | None:
        s = self._stats.get(name)
        return None if s is None else s.ewma_ttft

    @contextlib.asynccontextmanager
    async def slot(self, backend: Backend) -> AsyncIterator[None]:
        """Hold one of ``backend.max_inflight`` slots; wait up to ``queue_timeout`` for one,
        then raise :class:`BackendBusyError` (the relay tries the next candidate)."""
        if backend.max_inflight is None:
            yield
            return
        s = self.stats(backend.name)
        if s.slots is None or s.slots_cap != backend.max_inflight:  # first use, or changed by a reload
            s.slots, s.slots_cap = asyncio.Semaphore(backend.max_inflight), backend.max_inflight
        sem = s.slots
        if sem.locked():
            s.waiting += 1
            try:
                await asyncio.wait_for(sem.acquire(), self.settings.queue_timeout)
            except TimeoutError:
                raise BackendBusyError(
                    f"backend {backend.name!r} is at its limit of {backend.max_inflight} concurrent requests") from None
            finally:
                s.waiting -= 1
        else:
            await sem.acquire()
        try:
            yield
        finally:
            sem.release()


_METRIC_LINE = re.compile(r'^(vllm:num_requests_(?:waiting|running))(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$', re.M)


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """Sum ``vllm:num_requests_waiting`` and ``..._running`` over label sets."""
    out = {"waiting": 0.0, "running": 0.0}
    for name, value in _METRIC_LINE.findall(text):
        try:
            out[name.rsplit("_", 1)[1]] += float(value)
        except ValueError:
            continue
    return out


class MetricsScraper:
    """Periodically scrapes ``/metrics`` of vLLM and llm-d backends into a :class:`HealthBoard`.

    Run :meth:`run` as a background task (the server's cleanup_ctx starts and cancels it).
    ``get_backends`` returns the current table's backends, so a reload is picked up."""

    KINDS = ("vllm", "llm-d")

    def __init__(self, board: HealthBoard, get_backends: Callable[[], Mapping[str, Backend]], *,
                 interval: float = 2.0, timeout: float = 1.0) -> None:
        self.board, self.get_backends = board, get_backends
        self.interval, self.timeout = interval, timeout

    @staticmethod
    def metrics_url(backend: Backend) -> str:
        base = backend.base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        return base + "/metrics"

    async def scrape_once(self, session) -> int:  # type: ignore[no-untyped-def]
        import aiohttp

        done = 0
        for b in list(self.get_backends().values()):
            if b.kind not in self.KINDS or not b.base_url:
                continue
            try:
                async with session.get(self.metrics_url(b), timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                    if r.status != 200:
                        continue
                    m = parse_vllm_metrics(await r.text())
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                log.debug("metrics scrape of %s failed: %s", b.name, err)
                continue
            self.board.report_queue(b.name, m["waiting"] + m["running"])
            done += 1
        return done

    async def run(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            while True:
                await self.scrape_once(session)
                await asyncio.sleep(self.interval)
