"""Cache keys, stream assembly and replay (tool calls, completions), single-flight bookkeeping."""

from __future__ import annotations

import orjson

from iir.policies.cache import BodyCapture, assemble_stream, cache_key, is_deterministic, replay_stream

FIELDS = ("messages", "temperature", "tools", "seed")


def sse(*objs: dict) -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objs) + b"data: [DONE]\n\n"


def test_key_is_canonical_and_selective():
    a = {"messages": [{"role": "user", "content": "x"}], "temperature": 0, "user": "alice"}
    b = {"user": "bob", "temperature": 0.0, "messages": [{"content": "x", "role": "user"}]}
    assert cache_key("chat", "m", a, FIELDS) == cache_key("chat", "m", b, FIELDS)  # order, 0 vs 0.0, unlisted
    assert cache_key("chat", "m", a, FIELDS) != cache_key("chat", "m2", a, FIELDS)
    assert cache_key("chat", "m", a, FIELDS) != cache_key("completions", "m", a, FIELDS)
    assert cache_key("chat", "m", a, FIELDS) != cache_key("chat", "m", {**a, "seed": 1}, FIELDS)


def test_deterministic_only():
    assert is_deterministic("chat", {"temperature": 0})
    assert is_deterministic("chat", {"seed": 3, "temperature": 0.9})
    assert not is_deterministic("chat", {})
    assert not is_deterministic("chat", {"temperature": 0.2})
    assert is_deterministic("embeddings", {})


def test_tool_call_stream_round_trip():
    base = {"id": "c1", "created": 1, "model": "up", "object": "chat.completion.chunk"}
    raw = sse(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
            "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
                              "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
                              "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}},
    )
    entry = assemble_stream(raw, "chat")
    assert entry is not None
    msg = entry["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["tool_calls"] == [{"id": "call_1", "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert entry["choices"][0]["finish_reason"] == "tool_calls" and entry["usage"]["total_tokens"] == 14
    again = assemble_stream(b"".join(replay_stream(entry, "chat", model="m", include_usage=True)), "chat")
    assert again is not None
    assert again["choices"] == entry["choices"] and again["usage"] == entry["usage"] and again["model"] == "m"


def test_incomplete_or_error_streams_are_not_cached():
    base = {"id": "c1", "created": 1, "model": "up"}
    no_finish = b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": {"content": "hi"}}]}) + b"\n\n"
    assert assemble_stream(no_finish, "chat") is None
    assert assemble_stream(b'data: {"error": {"message": "boom"}}\n\n', "chat") is None
    assert assemble_stream(b"data: not json\n\n", "chat") is None


def test_completions_stream_round_trip():
    base = {"id": "cmpl-1", "created": 1, "model": "up", "object": "text_completion"}
    raw = sse({**base, "choices": [{"index": 0, "text": "Hello", "finish_reason": None}]},
              {**base, "choices": [{"index": 0, "text": " world", "finish_reason": "length"}]})
    entry = assemble_stream(raw, "completions")
    assert entry is not None and entry["choices"][0]["text"] == "Hello world"
    replayed = b"".join(replay_stream(entry, "completions", model="m", include_usage=False))
    assert replayed.endswith(b"data: [DONE]\n\n")
    assert assemble_stream(replayed, "completions")["choices"] == entry["choices"]


def test_capture_limit():
    cap = BodyCapture(10)
    cap.feed(b"12345")
    assert cap.value() == b"12345" and not cap.overflow
    cap.feed(b"678901")
    assert cap.overflow and cap.value() == b""


async def test_single_flight_overlapping_leaders_release_their_own_followers():
    import asyncio

    from iir.policies.cache import SingleFlight

    flight = SingleFlight()
    first = flight.lead("k")
    second = flight.lead("k")  # e.g. a no-cache request leading while another call is in flight
    assert flight.in_flight("k") is second
    flight.finish("k", first, b"one")
    assert first.result() == b"one"
    assert flight.in_flight("k") is second and not second.done()
    flight.finish("k", second, None)
    assert second.result() is None and flight.in_flight("k") is None and len(flight) == 0
    await asyncio.sleep(0)
