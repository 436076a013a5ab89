"""The agent directory (memory and Redis) and the small pure pieces of the agent."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iir.agent.config import DEFAULT_MODEL, load_agent_config
from iir.agent.engine import StopMatcher
from iir.agent.engine_vllm import parse_vllm_metrics
from iir.agent.registration import Backoff
from iir.policies.agents import (
    AgentDirectory,
    AgentEntry,
    MemoryAgentDirectory,
    RedisAgentDirectory,
    agent_id_for,
)


def _entry(port: int = 5000, models: tuple[str, ...] = ("tiny-demo",)) -> AgentEntry:
    url = f"http://127.0.0.1:{port}"
    return AgentEntry(id=agent_id_for(url), url=url, models=models, name=f"laptop-{port}", context_window=512,
                      capabilities=("json",), engine="transformers", device="cpu", max_queue=4)


async def _exercise(directory: AgentDirectory) -> None:
    await directory.start()
    try:
        first = await directory.register(_entry(5000))
        await directory.register(_entry(5001, ("other",)))
        snap = directory.snapshot()
        assert [b.name for b in snap.candidates("tiny-demo", 30)] == ["agents/127.0.0.1:5000"]
        assert [b.name for b in snap.candidates(None, 30)] == ["agents/127.0.0.1:5000", "agents/127.0.0.1:5001"]
        backend = snap.candidates("tiny-demo", 30)[0]
        assert backend.dynamic and backend.protocol == "agent" and backend.base_url == "http://127.0.0.1:5000"
        # the agent claims json, but the agent protocol carries plain text: the router gives it none
        assert backend.context_window == 512 and backend.capabilities == frozenset()

        await asyncio.sleep(0.3)
        assert directory.snapshot().candidates("tiny-demo", 0.2) == ()  # stale: heartbeat older than timeout
        beat = await directory.heartbeat(first.id, {"queue_length": 3, "in_flight": 1, "tokens_per_second": 9.5})
        assert beat is not None and beat.queue_length == 3 and beat.in_flight == 1
        assert [b.name for b in directory.snapshot().candidates("tiny-demo", 0.2)] == ["agents/127.0.0.1:5000"]

        again = await directory.register(_entry(5000))  # re-registration keeps registered_at
        assert again.registered_at == pytest.approx(first.registered_at)
        assert await directory.heartbeat("127.0.0.1:9", {}) is None
        assert await directory.deregister(first.id) is True
        assert await directory.deregister(first.id) is False
        assert [e.id for e in await directory.entries()] == ["127.0.0.1:5001"]
        assert await directory.deregister("127.0.0.1:5001") is True
        assert directory.snapshot().entries == ()
    finally:
        await directory.close()


async def test_memory_directory() -> None:
    await _exercise(MemoryAgentDirectory())


@pytest.mark.redis
async def test_redis_directory_and_replicas_agree(redis_url: str) -> None:
    from redis.asyncio import Redis

    client_a, client_b = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        await _exercise(RedisAgentDirectory(client_a))
        a, b = RedisAgentDirectory(client_a), RedisAgentDirectory(client_b, refresh_interval=0.1)
        await a.start()
        await b.start()
        await a.register(_entry(6000))
        for _ in range(20):  # b's background refresh picks it up
            if b.snapshot().candidates("tiny-demo", 30):
                break
            await asyncio.sleep(0.05)
        assert [e.name for e in b.snapshot().entries] == ["laptop-6000"]
        assert abs(b.snapshot().clock_offset) < 5  # Redis and local clocks are the same machine here
        await b.deregister(agent_id_for("http://127.0.0.1:6000"))
        assert a.snapshot().get("127.0.0.1:6000") is not None  # until a's next refresh
        await a.refresh()
        assert a.snapshot().entries == ()
        await a.close()
        await b.close()
    finally:
        await client_a.aclose()
        await client_b.aclose()


def test_agent_id_is_the_address() -> None:
    assert agent_id_for("http://127.0.0.1:5000/") == "127.0.0.1:5000"
    assert agent_id_for("https://Laptop.local:8443/agent") == "laptop.local:8443/agent"


def test_stop_matcher_holds_back_partial_matches() -> None:
    m = StopMatcher(("END",))
    out = [m.feed(d) for d in ("Hello E", "N", "D tail")]
    assert "".join(out) == "Hello " and m.stopped
    m = StopMatcher(("xyz",))
    assert m.feed("abcxy") + m.flush() == "abcxy"
    assert StopMatcher.cut("a, b. c", (".", ",")) == ("a", True)
    assert StopMatcher.cut("abc", ()) == ("abc", False)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    b = Backoff(base=0.5, cap=4.0, rng=random.Random(1))
    delays = [b.next() for _ in range(12)]
    assert all(0.25 <= d <= 4.0 for d in delays)
    assert max(delays[6:]) > max(delays[:2])
    b.reset()
    assert b.next() <= 0.5


def test_parse_vllm_metrics_sums_label_sets() -> None:
    text = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-demo"} 2.0
vllm:num_requests_running{engine="1",model_name="tiny-demo"} 1.0
vllm:num_requests_waiting{engine="0",model_name="tiny-demo"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-demo"} 0.25
vllm:prompt_tokens_total{engine="0",model_name="tiny-demo"} 99.0
"""
    assert parse_vllm_metrics(text) == {"running": 3.0, "waiting": 4.0, "kv_cache_usage_perc": 0.25}


def test_agent_config_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("port: 5100\nmax_queue: 3\nmodels: {mine: /models/mine}\nmodel: mine\nrouter_url: http://a\n")
    env = {"ROUTER_URL": "http://router:8000", "IIR_HEARTBEAT_INTERVAL": "2.5", "IIR_AGENT_TOKEN": "t0k"}
    config = load_agent_config(cfg, env, {"port": 5200, "host": None})
    assert config.port == 5200 and config.max_queue == 3 and config.router_url == "http://router:8000"
    assert config.heartbeat_interval == 2.5 and config.token is not None and "t0k" not in repr(config)
    assert config.model_source() == "/models/mine" and config.served_name() == "mine"
    assert DEFAULT_MODEL in load_agent_config(None, {}).models
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_queue: 0\nengine: tpu\n")
    with pytest.raises(ValueError, match="max_queue") as err:
        load_agent_config(bad, {})
    assert "engine" in str(err.value)


@pytest.mark.parametrize(("text", "env", "message"), [
    ("modls: {}\n", {}, "agent.yaml: modls: unknown setting (did you mean 'models'?)"),
    ("vllm: {ur: http://x}\n", {}, "agent.yaml: vllm.ur: unknown setting (did you mean 'url'?)"),
    ("models: [\n", {}, "agent.yaml:2:1 YAML syntax error: expected the node content, but found '<stream end>'"),
    ("device: tpu\n", {}, "device: unknown device 'tpu': use auto, cpu, cuda, cuda:N or mps"),
    ("port: 5000\n", {"ROUTER_URL": "router:8000"}, "router_url: must be an http:// or https:// URL"),
    ("advertise_url: 10.0.0.5:5000\n", {}, "advertise_url: must be an http:// or https:// URL"),
    (b"\xff\xfe\x00", {}, "agent.yaml: the agent config is not UTF-8 text"),
])
def test_agent_config_errors_are_one_clear_line_each(tmp_path: Path, text: str | bytes, env: dict[str, str],
                                                     message: str) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as err:
        load_agent_config(cfg, env)
    assert message in str(err.value).replace(str(tmp_path) + "/", "")
    for url in ("http://[::1]:8000", "https://router.example/iir", "http://10.0.0.1:8000/"):
        assert load_agent_config(None, {"ROUTER_URL": url}).router_url == url


def test_explicit_device_must_exist_on_this_machine() -> None:
    import torch

    from iir.agent.engine_transformers import pick_device

    assert pick_device("cpu") == "cpu" and pick_device("auto") in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            pick_device(f"cuda:{torch.cuda.device_count()}")
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        with pytest.raises(ValueError, match="MPS is not available"):
            pick_device("mps")


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                     max_leaves=20)
_FIELDS = st.fixed_dictionaries({}, optional={
    "prompt": _JSON, "messages": _JSON, "max_tokens": _JSON, "temperature": _JSON, "top_p": _JSON, "stop": _JSON,
    "seed": _JSON, "stream": _JSON, "model": _JSON, "n": _JSON, "min_tokens": _JSON, "stream_options": _JSON})


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(_FIELDS, _JSON), raw=st.binary(max_size=64), use_raw=st.booleans())
def test_any_request_body_parses_or_is_a_400(body: object, raw: bytes, use_raw: bool) -> None:
    """/infer and /v1/chat/completions bodies: parsed into a generation request, or a 400 — never
    another exception (the agent's boundary would turn that into a 500)."""
    import json

    from iir.agent import protocol as p
    from iir.errors import IIRError

    data = raw if use_raw else json.dumps(body).encode()
    for model in (p.InferBody, p.ChatBody):
        try:
            parsed = p.parse_body(data, model)
            p.to_generation_request(parsed)
        except IIRError as e:
            assert e.status == 400 and e.to_openai()["error"]["message"]


async def test_stop_while_the_engine_starts_returns_promptly() -> None:
    """SIGINT/SIGTERM during a long start (a vLLM server that does not answer yet) stops the agent
    at once instead of after the start-up timeout."""
    import asyncio

    from iir.agent.config import AgentConfig
    from iir.agent.runner import serve_agent
    from tests.conftest import free_port

    config = AgentConfig(engine="vllm", model="tiny", port=0,
                         vllm={"url": f"http://127.0.0.1:{free_port()}/v1", "startup_timeout": 600})
    stop = asyncio.Event()
    ready: list[str] = []
    task = asyncio.ensure_future(serve_agent(config, stop=stop, on_ready=ready.append))
    await asyncio.sleep(1.5)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 10)  # far below the 600 s start-up timeout
    assert ready == []


async def test_registration_keeps_retrying_through_a_proxy_answering_odd_errors(
        caplog: pytest.LogCaptureFixture) -> None:
    """A proxy in front of the router may answer {"error": "..."} (a string) or no JSON at all:
    the agent logs it and keeps retrying (it used to crash its registration task)."""
    import asyncio
    import logging

    from aiohttp import web

    from iir.agent.registration import Backoff, RegistrationClient

    answers = [web.json_response({"error": "bad gateway"}, status=502), web.Response(status=503, text="<html>"),
               web.json_response({"ok": True}, status=200)]
    seen: list[int] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(len(seen))
        return answers[min(len(seen) - 1, len(answers) - 1)]

    app = web.Application()
    app.router.add_post("/register", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    caplog.set_level(logging.WARNING, logger="iir.agent.registration")

    async def load() -> dict[str, object]:
        return {}

    client = RegistrationClient(url, "t", {"url": "http://127.0.0.1:1", "models": ["m"]}, load,
                                backoff=Backoff(base=0.05, cap=0.05))
    await client.start()
    try:
        for _ in range(100):
            if len(seen) >= 4:
                break
            await asyncio.sleep(0.05)
        assert len(seen) >= 4 and not client._task.done()  # type: ignore[union-attr]
        text = caplog.text
        assert "HTTP 502: bad gateway" in text and "HTTP 503" in text and "HTTP 200 without an agent id" in text
    finally:
        await client.stop()
        await runner.cleanup()
