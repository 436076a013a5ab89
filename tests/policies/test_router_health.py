"""Circuit breaker, max_inflight and strategies through the real router."""

from __future__ import annotations

import asyncio

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
  health: {{failures: 2, cooldown: {cooldown}, queue_timeout: 200ms}}
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
    for _ in range(2):  # two failures open the circuit (each request falls back to good)
        status, _, raw = await post(base)
        assert status == 200 and b"from good" in raw
    assert bad.calls == 2
    status, headers, raw = await post(base)
    assert status == 200 and b"from good" in raw
    assert bad.calls == 2  # skipped while open
    assert "bad!healthy" in headers["x-iir-route"]
    await asyncio.sleep(1.2)
    bad.fail = False
    status, _, raw = await post(base)  # half-open probe succeeds
    assert status == 200 and b"from bad" in raw
    assert bad.calls == 3


async def test_max_inflight_sheds_to_next_candidate(make_upstream, start_router):
    slow = await make_upstream(delay=1.0, text="from slow")
    good = await make_upstream(text="from good")
    base, _ = await start_router(SPEC.format(bad=slow.url, good=good.url, bad_extra=", max_inflight: 1",
                                             cooldown="30s"))
    results = await asyncio.gather(post(base), post(base))
    texts = sorted(r[2].decode() for r in results)
    assert all(r[0] == 200 for r in results)
    assert any("from slow" in t for t in texts) and any("from good" in t for t in texts)
    assert slow.calls == 1
