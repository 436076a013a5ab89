"""Circuit breaker, max_inflight and strategies through the real router."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

SPEC = """
version: 1
backends:
  bad:  {{kind: openai-compatible, url: "{bad}/v1", models: [m1]{bad_extra}}}
  good: {{kind: openai-compatible, url: "{good}/v1", models: [m1]}}
routes:
  - name: r
    match: {{model: m1}}
    to: [bad, good]
policies:
  health: {{failures: 5, cooldown: {cooldown}, queue_timeout: 200ms}}
"""
BODY = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


async def post(base: str) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.post(f"{base}/v1/chat/completions", json=BODY,
                                                    timeout=aiohttp.ClientTimeout(total=20)) as r:
        return r.status, dict(r.headers), await r.read()


async def test_failing_backend_skipped_during_cooldown_then_retried(make_upstream, start_router):
    bad = await make_upstream(fail=True, text="from bad")
    good = await make_upstream(text="from good")
    base, _ = await start_router(SPEC.format(bad=bad.url, good=good.url, bad_extra="", cooldown="1s"))
    for _ in range(5):  # five consecutive failures open the circuit (each request falls back to good)
        status, _, raw = await post(base)
        assert status == 200 and b"from good" in raw
    assert bad.calls == 5
    for _ in range(3):
        status, headers, raw = await post(base)
        assert status == 200 and b"from good" in raw
    assert bad.calls == 5  # skipped while open
    assert "bad!healthy" in headers["x-iir-route"]
    await asyncio.sleep(1.2)
    bad.fail = False
    status, _, raw = await post(base)  # after the cooldown: the half-open probe succeeds
    assert status == 200 and b"from bad" in raw
    assert bad.calls == 6
    status, _, raw = await post(base)  # closed again
    assert status == 200 and b"from bad" in raw


async def test_max_inflight_sheds_to_next_candidate(make_upstream, start_router):
    slow = await make_upstream(delay=1.0, text="from slow")
    good = await make_upstream(text="from good")
    base, _ = await start_router(SPEC.format(bad=slow.url, good=good.url, bad_extra=", max_inflight: 1",
                                             cooldown="30s"))
    results = await asyncio.gather(post(base), post(base))
    texts = sorted(r[2].decode() for r in results)
    assert all(r[0] == 200 for r in results)
    assert any("from slow" in t for t in texts) and any("from good" in t for t in texts)
    assert slow.calls == 1 and slow.max_active == 1


async def test_backend_limit_falls_back_to_next_candidate(make_upstream, tmp_path, caplog):
    from iir.compile.build import build_table
    from iir.pipeline import ratelimit, select
    from iir.pipeline.chain import STAGES
    from iir.server.app import create_app
    from iir.server.state import TableState
    from tests.policies.conftest import _serve

    a = await make_upstream(text="from a")
    b = await make_upstream(text="from b")
    spec = tmp_path / "iir.yaml"
    spec.write_text(f"""
version: 1
backends:
  a: {{kind: openai-compatible, url: "{a.url}/v1", models: [m1]}}
  b: {{kind: openai-compatible, url: "{b.url}/v1", models: [m1]}}
routes:
  - {{name: r, match: {{model: m1}}, to: [a, b], limits: [a-cap]}}
policies:
  limits:
    a-cap: {{per: backend, requests: 2/min}}
""")
    env = {"SQLITE_DB_PATH": str(tmp_path / "iir.db")}
    stages = list(STAGES)
    if ratelimit.make_backend_stage not in stages:
        stages.insert(stages.index(select.make_stage) + 1, ratelimit.make_backend_stage)
    app = create_app(TableState(path=spec, built=build_table(spec, env), env=lambda: env), stages=stages, watch=False)
    runner, base = await _serve(app)
    caplog.set_level(logging.INFO, logger="iir.request")
    try:
        results = [await post(base) for _ in range(5)]
    finally:
        await runner.cleanup()
    # each backend has its own 2/min counter: a serves two, then its cap pushes requests to b
    assert [r[2].count(b"from a") for r in results[:2]] == [1, 1]
    assert [r[2].count(b"from b") for r in results[2:4]] == [1, 1]
    assert (a.calls, b.calls) == (2, 2)
    status, headers, raw = results[4]
    assert status == 429 and headers["x-ratelimit-limit-requests"] == "2" and b"a-cap" in raw
    lines = [(r.fields["backend"], r.fields["status"], r.fields["ratelimit"]) for r in caplog.records
             if r.name == "iir.request"]
    assert lines == [("a", 200, "ok")] * 2 + [("b", 200, "ok")] * 2 + [(None, 429, "limited")]


async def test_affinity_by_session_header_and_route_explain(make_upstream, start_router):
    ups = [await make_upstream(text=f"from u{i}") for i in range(3)]
    backends = "\n".join(f'  u{i}: {{kind: openai-compatible, url: "{u.url}/v1", models: [m1]}}' for i, u in enumerate(ups))
    base, _ = await start_router(f"""
version: 1
backends:
{backends}
routes:
  - {{name: sticky, match: {{model: m1}}, to: [u0, u1, u2], strategy: affinity}}
""")
    seen: dict[str, set[bytes]] = {}
    async with aiohttp.ClientSession() as s:
        for session in ("alice", "bob", "carol", "dave", "erin", "frank"):
            for _ in range(3):
                async with s.post(f"{base}/v1/chat/completions", json=BODY, headers={"x-session-id": session},
                                  timeout=aiohttp.ClientTimeout(total=20)) as r:
                    assert r.status == 200
                    raw = await r.read()
                    route = r.headers["x-iir-route"]
                seen.setdefault(session, set()).add(raw.split(b"from ")[1][:2])
    assert all(len(v) == 1 for v in seen.values())  # each session sticks to one backend
    assert len({next(iter(v)) for v in seen.values()}) >= 2  # and sessions spread
    assert route.startswith("sticky; affinity; ") and "u0=" in route and "u1=" in route


async def test_max_inflight_queues_within_queue_timeout(make_upstream, start_router):
    """A request over ``max_inflight`` waits for a slot (up to ``queue_timeout``) instead of shedding."""
    slow = await make_upstream(delay=0.3, text="from slow")
    other = await make_upstream(text="from other")
    base, _ = await start_router(f"""
version: 1
backends:
  slow:  {{kind: openai-compatible, url: "{slow.url}/v1", models: [m1], max_inflight: 1}}
  other: {{kind: openai-compatible, url: "{other.url}/v1", models: [m1]}}
routes:
  - {{name: r, match: {{model: m1}}, to: [slow, other]}}
policies:
  health: {{queue_timeout: 10s}}
""")
    results = await asyncio.gather(*(post(base) for _ in range(3)))
    assert all(r[0] == 200 and b"from slow" in r[2] for r in results)
    assert (slow.calls, other.calls) == (3, 0)
    assert slow.max_active == 1  # one at a time: the others queued for the slot
