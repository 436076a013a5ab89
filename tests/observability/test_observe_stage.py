"""The observe stage in a real aiohttp app on loopback, with hand-built request contexts.

Inner stages stand in for the router's real ones and set the context the way they will; each
scenario then checks the single log line and the counters read back from GET /metrics.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from iir.errors import IIRError, RateLimitedError, UpstreamError
from iir.observability.logging import configure_logging
from iir.observability.metrics import METRICS_KEY, Metrics
from iir.pipeline.context import Attempt, RequestContext
from iir.pipeline.observe import observe_stage
from iir.server import metrics_api
from iir.table import RoutingTable

from .promtext import samples, value

pytestmark = pytest.mark.usefixtures("restore_logging")


async def _inner(ctx: RequestContext) -> web.StreamResponse:
    """Acts out the scenario named in the x-scenario header."""
    scenario = ctx.http.headers["x-scenario"]
    t = ctx.table
    ctx.key = next(iter(t.auth.keys_by_sha256.values()))
    ctx.model = ctx.http.headers.get("x-model", "tiny")
    ctx.ratelimit = "ok"
    ctx.route = t.routes[0]
    if scenario == "ratelimited":
        ctx.ratelimit = "limited"
        raise RateLimitedError("rate limit exceeded", headers={"Retry-After": "3"})
    ctx.cache = "miss"
    if scenario == "cache-hit":
        ctx.cache = "hit"
        ctx.usage = {"prompt_tokens": 5, "completion_tokens": 7}
        return web.json_response({"ok": True})
    if scenario == "upstream-error":
        ctx.attempts += [Attempt("local-a", None, "connect", 0.001), Attempt("local-b", 500, "http_500", 0.002)]
        ctx.upstream_seconds = 0.003
        raise UpstreamError("upstream local-b answered 500", upstream_status=500)
    if scenario == "fallback":
        ctx.attempts += [Attempt("local-a", 503, "http_503", 0.001), Attempt("local-b", 200, "", 0.002)]
        ctx.backend = "local-b"
    else:
        ctx.attempts.append(Attempt("local-a", 200, "", 0.002))
        ctx.backend = "local-a"
    ctx.upstream_seconds = 0.002
    ctx.usage = {"prompt_tokens": 11, "completion_tokens": 3}
    if scenario in ("stream", "disconnect", "stream-broken"):
        ctx.stream = True
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(ctx.http)
        await resp.write(b'data: {"x": 1}\n\n')
        ctx.first_byte_at = time.perf_counter()
        if scenario == "stream-broken":  # the upstream failed after the first byte: SSE error event
            ctx.error = "upstream_error"
            await resp.write(b'data: {"error": {"message": "backend broke off"}}\n\n')
        if scenario == "disconnect":
            for _ in range(500):  # until the write notices the client is gone
                await asyncio.sleep(0.01)
                await resp.write(b'data: {"x": 2}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    return web.json_response({"ok": True})


def _app(table: RoutingTable, log: logging.Logger) -> web.Application:
    app = web.Application()
    metrics = metrics_api.setup(app)
    metrics.on_spec_loaded(table)
    stage = observe_stage(metrics, log)

    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = RequestContext(http=request, table=table, request_id=request.headers["x-request-id"], endpoint="chat")
        try:
            return await stage(ctx, _inner)
        except IIRError as e:  # the HTTP boundary, as the router's will be
            return web.json_response(e.to_openai(), status=e.status, headers=e.headers)

    app.router.add_post("/v1/chat/completions", handle)
    return app


@pytest.fixture
async def served(table) -> AsyncIterator[tuple[str, io.StringIO, Metrics]]:
    out = io.StringIO()
    log = configure_logging(table.server, stream=out)
    app = _app(table, log)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")), out, app[METRICS_KEY]
    finally:
        await server.close()


async def _post(session: aiohttp.ClientSession, base: str, scenario: str, rid: str, model: str = "tiny") -> int:
    async with session.post(f"{base}/v1/chat/completions", json={},
                            headers={"x-scenario": scenario, "x-request-id": rid, "x-model": model}) as r:
        await r.read()
        return r.status


def _events(out: io.StringIO) -> dict[str, dict]:
    docs = [orjson.loads(line) for line in out.getvalue().splitlines() if line]
    requests = [d for d in docs if d["event"] == "request"]
    by_id = {d["request_id"]: d for d in requests}
    assert len(by_id) == len(requests), "more than one log event for a request"
    return by_id


async def test_known_traffic_gives_exact_log_lines_and_counters(served) -> None:
    base, out, _ = served
    plan = [("ok", "r-ok"), ("stream", "r-stream"), ("cache-hit", "r-hit"), ("ratelimited", "r-429"),
            ("fallback", "r-fallback"), ("upstream-error", "r-502")]
    async with aiohttp.ClientSession() as s:
        statuses = {rid: await _post(s, base, sc, rid) for sc, rid in plan}
        metrics_text = await (await s.get(f"{base}/metrics")).text()
    assert statuses == {"r-ok": 200, "r-stream": 200, "r-hit": 200, "r-429": 429, "r-fallback": 200, "r-502": 502}

    ev = _events(out)
    assert set(ev) == {rid for _, rid in plan}
    ok = ev["r-ok"]
    assert (ok["key"], ok["model"], ok["route"], ok["backend"], ok["status"], ok["error"]) == \
        ("ci", "tiny", "tiny-route", "local-a", 200, None)
    assert ok["attempts"] == [{"backend": "local-a", "status": 200, "error": None, "ms": 2.0}]
    assert (ok["prompt_tokens"], ok["completion_tokens"], ok["cache"], ok["ratelimit"]) == (11, 3, "miss", "ok")
    assert ok["latency_ms"] >= ok["overhead_ms"] >= 0 and ok["upstream_ms"] == 2.0 and ok["ttft_ms"] is None
    assert ev["r-stream"]["stream"] is True and 0 <= ev["r-stream"]["ttft_ms"] <= ev["r-stream"]["latency_ms"]
    assert (ev["r-hit"]["cache"], ev["r-hit"]["backend"], ev["r-hit"]["attempts"]) == ("hit", None, [])
    assert (ev["r-429"]["status"], ev["r-429"]["ratelimit"], ev["r-429"]["error"]) == \
        (429, "limited", "rate_limit_exceeded")
    assert [a["backend"] for a in ev["r-fallback"]["attempts"]] == ["local-a", "local-b"]
    assert ev["r-fallback"]["backend"] == "local-b"
    bad = ev["r-502"]
    assert (bad["status"], bad["error"], bad["level"], bad["backend"]) == (502, "upstream_error", "warning", None)
    assert [a["error"] for a in bad["attempts"]] == ["connect", "http_500"]

    m = samples(metrics_text)
    assert value(m, "iir_requests_total") == 6
    assert value(m, "iir_requests_total", model="tiny", route="tiny-route", backend="local-a", status="200") == 2
    assert value(m, "iir_requests_total", backend="local-b", status="200") == 1
    assert value(m, "iir_requests_total", status="429") == 1
    assert value(m, "iir_requests_total", status="502", backend="none") == 1
    assert value(m, "iir_request_errors_total") == 2
    assert value(m, "iir_request_errors_total", code="upstream_error") == 1
    assert value(m, "iir_cache_requests_total", result="hit") == 1
    assert value(m, "iir_cache_requests_total", result="miss") == 4
    assert value(m, "iir_rate_limit_decisions_total", key="ci", result="limited") == 1
    assert value(m, "iir_rate_limit_decisions_total", key="ci", result="ok") == 5
    assert value(m, "iir_fallbacks_total") == 2
    assert value(m, "iir_fallbacks_total", route="tiny-route", backend="local-a", reason="http_503") == 1
    assert value(m, "iir_fallbacks_total", backend="local-a", reason="connect") == 1
    assert value(m, "iir_upstream_attempts_total", backend="local-b", outcome="ok") == 1
    assert value(m, "iir_upstream_attempts_total", backend="local-b", outcome="http_500") == 1
    assert value(m, "iir_tokens_total", type="prompt") == 11 * 3 + 5
    assert value(m, "iir_tokens_total", type="completion") == 3 * 3 + 7
    assert value(m, "iir_request_duration_seconds_count") == 6
    assert value(m, "iir_time_to_first_token_seconds_count") == 1
    assert value(m, "iir_router_overhead_seconds_count") == 6
    assert value(m, "iir_requests_in_flight") == 0
    assert value(m, "iir_backend_healthy", backend="local-a") == 1
    assert value(m, "iir_spec_info", digest=served[2].spec_collector.labels["digest"]) == 1


async def test_client_disconnect_mid_stream_is_logged_once_as_499(served) -> None:
    base, out, _ = served
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{base}/v1/chat/completions", json={},
                         headers={"x-scenario": "disconnect", "x-request-id": "r-gone"})
        await r.content.readline()
        r.close()  # drop the connection while the server is still streaming
        for _ in range(300):
            if "r-gone" in out.getvalue():
                break
            await asyncio.sleep(0.02)
        text = await (await s.get(f"{base}/metrics")).text()
    ev = _events(out)["r-gone"]
    assert (ev["status"], ev["error"]) == (499, "client_closed")
    assert value(text, "iir_requests_total", status="499") == 1
    assert value(text, "iir_requests_in_flight") == 0


async def test_invented_model_names_do_not_grow_labels(served) -> None:
    base, out, _ = served
    async with aiohttp.ClientSession() as s:
        for i in range(3):
            await _post(s, base, "ratelimited", f"r{i}", model=f"made-up-{i}")
        await _post(s, base, "ok", "r-glob", model="gpt-4.1")  # undeclared, served by a glob route
        text = await (await s.get(f"{base}/metrics")).text()
    assert value(text, "iir_requests_total", model="other") == 3
    assert value(text, "iir_requests_total", model="gpt-4.1") == 1
    assert "made-up" not in text
    assert _events(out)["r1"]["model"] == "made-up-1"  # the log keeps what the client asked for


def test_each_app_has_its_own_registry(table) -> None:
    a, b = Metrics(), Metrics()
    a.on_spec_loaded(table)
    a.reload(True)
    assert a.registry is not b.registry
    from prometheus_client import generate_latest
    assert value(generate_latest(a.registry).decode(), "iir_config_reloads_total", result="success") == 1
    assert value(generate_latest(b.registry).decode(), "iir_config_reloads_total", result="success") == 0


def test_reload_keeps_circuit_verdicts_and_tracks_configuration(table) -> None:
    from dataclasses import replace

    from prometheus_client import generate_latest

    m = Metrics()
    m.on_spec_loaded(table)
    m.set_backend_health("local-a", False)  # the circuit breaker opened it
    unconfigured = replace(table.backends["local-b"], configured=False, unconfigured_reason="no key")
    m.on_spec_loaded(replace(table, backends={**table.backends, "local-b": unconfigured}))
    text = generate_latest(m.registry).decode()
    assert value(text, "iir_backend_healthy", backend="local-a") == 0
    assert value(text, "iir_backend_healthy", backend="local-b") == 0
    m.on_spec_loaded(replace(table, backends={"local-b": table.backends["local-b"]}))  # key added, local-a gone
    text = generate_latest(m.registry).decode()
    assert value(text, "iir_backend_healthy", backend="local-b") == 1
    assert 'backend="local-a"' not in text


async def test_stream_broken_after_first_byte_is_an_error_with_status_200(served) -> None:
    base, out, _ = served
    async with aiohttp.ClientSession() as s:
        assert await _post(s, base, "stream-broken", "r-broken") == 200
        text = await (await s.get(f"{base}/metrics")).text()
    ev = _events(out)["r-broken"]
    assert (ev["status"], ev["error"], ev["level"]) == (200, "upstream_error", "warning")
    assert value(text, "iir_request_errors_total", code="upstream_error") == 1
    assert value(text, "iir_requests_total", status="200") == 1
