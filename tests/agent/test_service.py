"""The agent's HTTP service against the real tiny model: /infer, SSE, OpenAI SDK, queue, bad input."""


from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import openai
import orjson
import pytest

from iir.agent.demo_model import DEMO_ANSWER
from iir.agent.engine import GenerationRequest, GenerationResult
from iir.agent.engine_transformers import TransformersEngine
from tests.agent.conftest import LocalAgent, eventually

pytestmark = pytest.mark.timeout(600)  # the first test may build the tiny model (cached afterwards)


async def _post(url: str, body: object, **kw: object) -> tuple[int, dict[str, object], dict[str, str]]:
    data = orjson.dumps(body) if isinstance(body, dict | list) else body  # bytes or an async generator
    async with aiohttp.ClientSession() as s, s.post(url, data=data, headers={"Content-Type": "application/json"},
                                                    **kw) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


async def _sse(url: str, body: dict[str, object]) -> list[str]:
    events = []
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        async for line in r.content:
            if line.startswith(b"data: "):
                events.append(line[6:].decode().strip())
    return events


async def test_infer_returns_the_tiny_models_answer(agent_url: str) -> None:
    status, body, _ = await _post(f"{agent_url}/infer", {"prompt": "Hi!", "temperature": 0})
    assert status == 200
    assert body["text"] == DEMO_ANSWER
    assert body["finish_reason"] == "stop"
    assert body["model"] == "tiny-demo"
    usage = body["usage"]
    assert isinstance(usage, dict)
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_infer_with_messages_stop_and_max_tokens(agent_url: str) -> None:
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who are you?"}]
    status, body, _ = await _post(f"{agent_url}/infer", {"messages": msgs, "temperature": 0, "stop": [" tiny"]})
    assert status == 200
    assert body["text"] == "Hello from the" and body["finish_reason"] == "stop"
    status, body, _ = await _post(f"{agent_url}/infer", {"messages": msgs, "temperature": 0, "max_tokens": 2})
    assert status == 200
    assert body["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 2  # type: ignore[index]
    assert DEMO_ANSWER.startswith(str(body["text"]))


async def test_infer_sampling_with_seed_is_reproducible(agent_url: str) -> None:
    req = {"prompt": "Hello", "temperature": 1.5, "top_p": 0.9, "seed": 7, "max_tokens": 12}
    first = await _post(f"{agent_url}/infer", req)
    second = await _post(f"{agent_url}/infer", req)
    assert first[0] == second[0] == 200
    assert first[1]["text"] == second[1]["text"]


async def test_omitted_temperature_follows_the_models_generation_config(agent_url: str) -> None:
    # The demo model's generation_config is greedy: a client that sends no temperature (the OpenAI SDK's
    # default) gets the greedy answer whatever the seed, even on a raw prompt where sampling would wander.
    greedy = await _post(f"{agent_url}/infer", {"prompt": "zq", "raw": True, "temperature": 0,
                                                "max_tokens": 16})
    assert greedy[0] == 200
    for seed in range(12):
        got = await _post(f"{agent_url}/infer", {"prompt": "zq", "raw": True, "seed": seed,
                                                 "max_tokens": 16})
        assert got[0] == 200 and got[1]["text"] == greedy[1]["text"], seed
    sampled = {(await _post(f"{agent_url}/infer", {"prompt": "zq", "raw": True, "seed": seed,
                                                   "temperature": 1.5, "max_tokens": 16}))[1]["text"]
               for seed in range(5)}
    assert sampled != {greedy[1]["text"]}  # an explicit temperature still samples


async def test_infer_stream_yields_several_events_then_done(agent_url: str) -> None:
    events = await _sse(f"{agent_url}/infer", {"prompt": "Hi!", "temperature": 0, "stream": True})
    assert events[-1] == "[DONE]"
    texts = [orjson.loads(e) for e in events[:-2]]
    assert len(texts) >= 3
    assert "".join(str(t["text"]) for t in texts) == DEMO_ANSWER
    final = orjson.loads(events[-2])
    assert final["finish_reason"] == "stop"
    assert final["usage"]["completion_tokens"] > 0


async def test_openai_sdk_against_the_agent(agent_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{agent_url}/v1", api_key="unused", max_retries=0, timeout=60)
    models = await client.models.list()
    assert [m.id for m in models.data] == ["tiny-demo"]
    chat = await client.chat.completions.create(
        model="tiny-demo", messages=[{"role": "user", "content": "Say hello."}], temperature=0)
    assert chat.choices[0].message.content == DEMO_ANSWER
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    stream = await client.chat.completions.create(
        model="tiny-demo", messages=[{"role": "user", "content": "ping"}], temperature=0, stream=True,
        stream_options={"include_usage": True})
    deltas, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(deltas) >= 3 and "".join(deltas) == DEMO_ANSWER
    assert finish == "stop"
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "tiny-demo" in str(err.value)
    await client.close()


@pytest.mark.parametrize(("body", "fragment"), [
    ({}, "exactly one of `prompt`"),
    ({"max_tokens": 5}, "exactly one of `prompt`"),
    ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 100_000}, "context window"),
    ({"prompt": "hi", "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"prompt": "hi", "top_p": 2}, "top_p"),
    (b"{not json", "not valid JSON"),
    (b"", "JSON object"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
])
async def test_bad_input_is_a_clear_400(agent_url: str, body: object, fragment: str) -> None:
    status, err, _ = await _post(f"{agent_url}/infer", body)
    assert status == 400
    assert err["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert fragment in err["error"]["message"]  # type: ignore[index]
    status, ok, _ = await _post(f"{agent_url}/infer", {"prompt": "Hi!", "temperature": 0})  # still serving
    assert status == 200 and ok["text"] == DEMO_ANSWER


async def test_a_body_over_max_body_is_413_like_the_router_and_the_agent_keeps_serving(agent_url: str) -> None:
    """A 5 MB prompt is over the default max_body (1 MiB): 413 request_too_large, the router's shape."""
    status, err, _ = await _post(f"{agent_url}/infer", {"prompt": "x" * (5 * 1024 * 1024)})
    assert status == 413
    assert err["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert err["error"]["code"] == "request_too_large"  # type: ignore[index]
    assert "max_body" in err["error"]["message"]  # type: ignore[index]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    status, err, _ = await _post(f"{agent_url}/v1/chat/completions", chunked())
    assert status == 413 and err["error"]["code"] == "request_too_large"  # type: ignore[index]
    status, body, _ = await _post(f"{agent_url}/infer", {"prompt": "Hi!", "temperature": 0})
    assert status == 200 and body["text"] == DEMO_ANSWER


async def test_a_5mb_prompt_within_max_body_is_a_400_over_the_context_window(
        start_agent: Callable[..., Awaitable[LocalAgent]]) -> None:
    agent = await start_agent(max_body=8 * 1024 * 1024)
    status, err, _ = await _post(f"{agent.url}/infer", {"prompt": "hello world " * (5 * 1024 * 1024 // 12)})
    assert status == 400
    assert err["error"]["code"] == "context_length_exceeded"  # type: ignore[index]
    assert "context window" in err["error"]["message"]  # type: ignore[index]
    status, err, _ = await _post(f"{agent.url}/infer", {"prompt": "hello world " * 400})
    assert status == 400 and err["error"]["code"] == "context_length_exceeded"  # type: ignore[index]
    status, body, _ = await _post(f"{agent.url}/infer", {"prompt": "Hi!", "temperature": 0})
    assert status == 200 and body["text"] == DEMO_ANSWER


async def test_full_queue_answers_503_with_retry_after(start_agent: Callable[..., Awaitable[LocalAgent]]) -> None:
    agent = await start_agent(max_queue=2)
    long = {"prompt": "Hi!", "temperature": 0, "min_tokens": 150, "max_tokens": 150}  # long enough to overlap

    async def admitted() -> bool:
        async with aiohttp.ClientSession() as s, s.get(f"{agent.url}/health") as r:
            h = await r.json()
            return bool(h["queue_length"] + h["in_flight"] == 2)

    first = asyncio.create_task(_post(f"{agent.url}/infer", long))
    second = asyncio.create_task(_post(f"{agent.url}/infer", long))
    await eventually(admitted, timeout=30, every=0.02)
    status, err, headers = await _post(f"{agent.url}/infer", {"prompt": "Hi!"})
    assert status == 503
    assert int(headers["Retry-After"]) >= 1
    assert err["error"]["code"] == "agent_busy"  # type: ignore[index]
    for task in (first, second):
        status, body, _ = await task
        assert status == 200 and body["usage"]["completion_tokens"] == 150  # type: ignore[index]


async def test_health_reports_model_device_queue_and_throughput(agent_url: str) -> None:
    await _post(f"{agent_url}/infer", {"prompt": "Hi!", "temperature": 0})
    async with aiohttp.ClientSession() as s, s.get(f"{agent_url}/health") as r:
        h = await r.json()
    assert h["status"] == "ok" and h["model"] == "tiny-demo" and h["device"] == "cpu"
    assert h["queue_length"] == 0 and h["in_flight"] == 0 and h["context_window"] == 512
    assert h["tokens_per_second"] > 0


async def test_cancel_flag_stops_a_generation(tiny_engine: TransformersEngine) -> None:
    prepared = await tiny_engine.prepare(GenerationRequest(prompt="Hi!", temperature=0, min_tokens=300,
                                                           max_tokens=300))
    cancel = threading.Event()
    result: GenerationResult | None = None
    async for item in tiny_engine.stream(prepared, cancel):
        if isinstance(item, str):
            cancel.set()  # the client went away after the first delta
        else:
            result = item
    assert result is not None
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens < 300


@pytest.mark.parametrize("path", ["/infer", "/v1/chat/completions"])
async def test_client_disconnect_stops_generation(agent_url: str, path: str, caplog: pytest.LogCaptureFixture) -> None:
    long: dict[str, object] = {"temperature": 0, "min_tokens": 450, "max_tokens": 450, "stream": True}
    long.update({"prompt": "Hi!"} if path == "/infer" else
                {"model": "tiny-demo", "messages": [{"role": "user", "content": "Hi!"}]})
    caplog.set_level(logging.INFO, logger="iir.agent")
    async with aiohttp.ClientSession() as s:
        resp = await s.post(f"{agent_url}{path}", json=long)
        assert resp.status == 200, await resp.text()
        assert (await resp.content.readline()).startswith(b"data: ")  # generation is running
        resp.close()  # drop the connection

    async def idle() -> bool:
        async with aiohttp.ClientSession() as s, s.get(f"{agent_url}/health") as r:
            h = await r.json()
            return bool(h["in_flight"] == 0 and h["queue_length"] == 0)

    await eventually(idle, timeout=30)
    # a client going away is routine: no traceback, no error line in the agent's log
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    status, body, _ = await _post(f"{agent_url}/infer", {"prompt": "Hi!", "temperature": 0})
    assert status == 200 and body["text"] == DEMO_ANSWER


async def test_unknown_path_and_wrong_method_are_openai_errors(agent_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{agent_url}/nope") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        async with s.get(f"{agent_url}/infer") as r:
            assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
            assert r.headers["Allow"] == "POST"


async def test_a_chat_template_refusing_the_messages_is_a_400(tiny_engine: TransformersEngine) -> None:
    """Templates such as Mistral's raise on a system message or non-alternating roles: a 400 naming it."""
    from iir.errors import BadRequestError

    tokenizer = tiny_engine._tokenizer
    original = tokenizer.chat_template
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    try:
        with pytest.raises(BadRequestError) as err:
            await tiny_engine.prepare(GenerationRequest(messages=({"role": "system", "content": "be brief"},)))
        assert err.value.status == 400 and "roles must alternate" in str(err.value)
    finally:
        tokenizer.chat_template = original
