"""State stores and rate limits against a real redis-server (and the in-memory store)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from iir.errors import RateLimitedError
from iir.policies.ratelimit import RateLimiter, format_reset
from iir.policies.store import Counter, MemoryStore, RedisStore, StateUnavailableError, StoreUnavailable
from iir.table import LimitSettings
from tests.conftest import free_port


@pytest.fixture(params=["memory", "redis"])
async def store(request, redis_url):
    st = MemoryStore() if request.param == "memory" else RedisStore(redis_url)
    yield st
    await st.close()


async def test_values_expire(store):
    await store.set("k", b"v", 0.3)
    assert await store.get("k") == b"v"
    await asyncio.sleep(0.45)
    assert await store.get("k") is None
    assert await store.get("absent") is None


async def test_acquire_is_all_or_nothing(store):
    a, b = Counter("a", 3, 60), Counter("b", 1, 60)
    assert (await store.acquire([a, b])).allowed
    r = await store.acquire([a, b])
    assert not r.allowed and r.denied_key == "b" and r.retry_after > 0
    # "a" was not charged by the refused acquire: two more fit
    assert (await store.acquire([a])).allowed
    ok = await store.acquire([a])
    assert ok.allowed and ok.counters[0].remaining == 0
    assert not (await store.acquire([a])).allowed


async def test_settle_returns_tokens(store):
    c = Counter("t", 1000, 60, cost=900)
    r = await store.acquire([c])
    assert r.allowed and r.counters[0].remaining == 100
    assert not (await store.acquire([Counter("t", 1000, 60, cost=200)])).allowed
    await store.settle("t", 60, r.counters[0].bucket, 100 - 900)  # real usage was 100
    assert (await store.acquire([Counter("t", 1000, 60, cost=800)])).allowed


async def test_two_instances_share_one_limit(redis_url):
    """Two limiters (as two router replicas would) on one Redis: 60/min admits 60, not 120."""
    a, b = RateLimiter(RedisStore(redis_url)), RateLimiter(RedisStore(redis_url))
    policy = LimitSettings("per-key", "key", (60, 60.0), None, "open")
    admitted = 0

    async def one(lim: RateLimiter) -> None:
        nonlocal admitted
        try:
            await lim.admit([policy], {"key": "ci"}, 10)
            admitted += 1
        except RateLimitedError:
            pass

    await asyncio.gather(*(one(a if i % 2 else b) for i in range(120)))
    assert 58 <= admitted <= 62
    await a.store.close()
    await b.store.close()


async def test_429_shape_and_headers():
    lim = RateLimiter(MemoryStore())
    policy = LimitSettings("tiny", "key", (2, 60.0), (1000, 60.0), "open")
    r = await lim.admit([policy], {"key": "k"}, 100)
    assert r.headers["x-ratelimit-limit-requests"] == "2"
    assert r.headers["x-ratelimit-remaining-requests"] == "1"
    assert r.headers["x-ratelimit-remaining-tokens"] == "900"
    assert r.headers["x-ratelimit-reset-tokens"].endswith("s")
    await lim.admit([policy], {"key": "k"}, 100)
    with pytest.raises(RateLimitedError) as e:
        await lim.admit([policy], {"key": "k"}, 100)
    err = e.value
    assert err.status == 429
    body = err.to_openai()["error"]
    assert body["type"] == "rate_limit_error" and body["code"] == "rate_limit_exceeded"
    assert int(err.headers["Retry-After"]) >= 1
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    # another key has its own counter
    await lim.admit([policy], {"key": "other"}, 100)


async def test_token_limit_rejects_and_reconciles(redis_url):
    lim = RateLimiter(RedisStore(redis_url))
    policy = LimitSettings("tok", "key", None, (1000, 60.0), "open")
    ids = {"key": "k"}
    with pytest.raises(RateLimitedError, match="too large"):
        await lim.admit([policy], ids, 1200)  # can never fit
    r = await lim.admit([policy], ids, 700)
    with pytest.raises(RateLimitedError):
        await lim.admit([policy], ids, 400)  # 700 + 400 > 1000
    await lim.settle(r, 150)  # the real usage was 150 tokens
    r2 = await lim.admit([policy], ids, 800)  # 150 + 800 fits after reconciliation
    assert int(r2.headers["x-ratelimit-remaining-tokens"]) <= 50
    await lim.store.close()


def test_format_reset():
    assert format_reset(0.02) == "20ms"
    assert format_reset(1) == "1s"
    assert format_reset(360) == "6m0s"
    assert format_reset(3723) == "1h2m3s"


@pytest.fixture
def own_redis():
    """A private redis-server this test may kill."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required"
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="iir-redis-kill-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield proc, f"redis://127.0.0.1:{port}/0"
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


async def test_redis_killed_fail_open_and_closed(own_redis, caplog):
    proc, url = own_redis
    store = RedisStore(url, retry_interval=0.2)
    lim = RateLimiter(store)
    open_p = LimitSettings("o", "key", (100, 60.0), None, "open")
    closed_p = LimitSettings("c", "key", (100, 60.0), None, "closed")
    assert not (await lim.admit([open_p], {"key": "k"}, 1)).fail_open
    proc.kill()
    proc.wait(timeout=10)
    for _ in range(20):  # nothing hangs: every call is bounded by the short timeouts
        r = await asyncio.wait_for(lim.admit([open_p], {"key": "k"}, 1), 2)
        assert r.fail_open
        with pytest.raises(StateUnavailableError) as e:
            await asyncio.wait_for(lim.admit([closed_p], {"key": "k"}, 1), 2)
        assert e.value.status == 503
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.get("x"), 2)
    outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert 1 <= len(outage_lines) <= 2  # logged once per interval, not once per request
    await store.close()


async def test_memory_store_is_bounded():
    st = MemoryStore(max_entries=10, max_bytes=1000)
    for i in range(50):
        await st.set(f"k{i}", b"x" * 100, 60)
    kept = [i for i in range(50) if await st.get(f"k{i}") is not None]
    assert len(kept) <= 10 and kept[-1] == 49  # the newest survive
