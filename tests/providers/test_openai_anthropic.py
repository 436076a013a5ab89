"""OpenAI chat → Anthropic Messages and back: table-driven, fixtures from Anthropic's docs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from iir.backends.openai_anthropic import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamTranslator,
    error_from_anthropic,
    from_anthropic_response,
    to_anthropic_request,
)
from iir.errors import BadRequestError, UpstreamError

from .providers_kit import assemble_openai, load_bytes, load_json

U = {"role": "user", "content": "Hi"}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                         "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                                                        "required": ["location"]}}}
CALL = {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}

REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain", {"messages": [U]},
     {"model": "claude-x", "max_tokens": DEFAULT_MAX_TOKENS, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}),
    ("system and multi-turn", {"messages": [{"role": "system", "content": "Be brief."}, U,
                                            {"role": "assistant", "content": "Hello!"},
                                            {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                                            {"role": "user", "content": "Again"}]},
     {"system": "Be brief.\n\nNo emoji.",
      "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                   {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
                   {"role": "user", "content": [{"type": "text", "text": "Again"}]}]}),
    ("images", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg"}}]}]},
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "What is this?"},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
         {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}}]}]}),
    ("tools auto", {"messages": [U], "tools": [TOOL], "tool_choice": "auto"},
     {"tools": [{"name": "get_weather", "description": "Weather now",
                 "input_schema": TOOL["function"]["parameters"]}], "tool_choice": {"type": "auto"}}),
    ("tool_choice required", {"messages": [U], "tools": [TOOL], "tool_choice": "required"},
     {"tool_choice": {"type": "any"}}),
    ("tool_choice none", {"messages": [U], "tools": [TOOL], "tool_choice": "none"}, {"tool_choice": {"type": "none"}}),
    ("tool_choice named", {"messages": [U], "tools": [TOOL],
                           "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     {"tool_choice": {"type": "tool", "name": "get_weather"}}),
    ("no parallel tools", {"messages": [U], "tools": [TOOL], "parallel_tool_calls": False},
     {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
    ("tool round trip", {"messages": [U, {"role": "assistant", "content": None, "tool_calls": [CALL, dict(CALL, id="toolu_01B")]},
                                      {"role": "tool", "tool_call_id": "toolu_01A", "content": "15 C"},
                                      {"role": "tool", "tool_call_id": "toolu_01B", "content": [{"type": "text", "text": "16 C"}]},
                                      {"role": "user", "content": "Thanks"}], "tools": [TOOL]},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                   {"role": "assistant", "content": [
                       {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "Paris"}},
                       {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"location": "Paris"}}]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 C"},
                       {"type": "tool_result", "tool_use_id": "toolu_01B", "content": "16 C"},
                       {"type": "text", "text": "Thanks"}]}]}),
    ("sampling and stops", {"messages": [U], "temperature": 1.5, "top_p": 0.9, "stop": "END", "max_tokens": 50,
                            "max_completion_tokens": 60, "user": "u-42", "stream": True},
     {"temperature": 1.0, "top_p": 0.9, "stop_sequences": ["END"], "max_tokens": 60,
      "metadata": {"user_id": "u-42"}, "stream": True}),
    ("stop list", {"messages": [U], "stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]}),
]


@pytest.mark.parametrize(("name", "body", "expected"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_translation(name: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = to_anthropic_request(body, "claude-x")
    for key, value in expected.items():
        assert out[key] == value, key
    json.dumps(out)  # serialisable as sent


def test_request_without_sampling_for_new_api_version() -> None:
    out = to_anthropic_request({"messages": [U], "temperature": 0.2, "top_p": 0.5}, "claude-x", sampling=False)
    assert "temperature" not in out and "top_p" not in out


BAD_REQUESTS = [
    ("no messages", {"messages": []}, "messages"),
    ("n>1", {"messages": [U], "n": 2}, "n"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("audio part", {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0]"),
    ("bad tool args", {"messages": [U, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{nope"}}]}]}, "messages[1].tool_calls[0]"),
    ("tool without id", {"messages": [U, {"role": "tool", "content": "x"}]}, "messages[1].tool_call_id"),
    ("json mode", {"messages": [U], "response_format": {"type": "json_object"}}, "response_format"),
    ("bad data url", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:xx"}}]}]},
     "messages[0].content[0]"),
    ("only system", {"messages": [{"role": "system", "content": "x"}]}, "messages"),
]


@pytest.mark.parametrize(("name", "body", "param"), BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_request_rejections(name: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as e:
        to_anthropic_request(body, "claude-x")
    assert e.value.status == 400 and e.value.param == param


RESPONSES = [
    ("message_text.json", "Hi! My name is Claude.", [], "stop", (2095, 503)),
    ("message_tool_use.json", "I'll check the current weather in San Francisco for you.",
     [("toolu_01A09q90qw90lq917835lq9", "get_weather", {"location": "San Francisco, CA", "unit": "celsius"})],
     "tool_calls", (384, 92)),
    ("message_max_tokens.json", "Once upon a time, in a land far", [], "length", (16, 10)),
    ("message_stop_sequence.json", "1, 2, 3, 4", [], "stop", (20, 8)),
]


@pytest.mark.parametrize(("fixture", "text", "calls", "finish", "usage"), RESPONSES, ids=[r[0] for r in RESPONSES])
def test_response_translation(fixture: str, text: str, calls: list[Any], finish: str, usage: tuple[int, int]) -> None:
    out = from_anthropic_response(load_json(f"anthropic/{fixture}"), created=7)
    assert out["object"] == "chat.completion" and out["created"] == 7
    choice = out["choices"][0]
    assert choice["message"]["content"] == text
    got = [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
           for c in choice["message"].get("tool_calls", [])]
    assert got == calls
    assert choice["finish_reason"] == finish
    assert (out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]) == usage
    assert out["usage"]["total_tokens"] == sum(usage)


MALFORMED = [
    ("not json", b"<html>502 Bad Gateway</html>"),
    ("json array", b"[1, 2]"),
    ("missing content", b'{"id": "msg_1", "type": "message", "stop_reason": "end_turn"}'),
    ("content not list", b'{"content": "hi"}'),
    ("block not object", b'{"content": ["hi"]}'),
    ("tool_use without id", b'{"content": [{"type": "tool_use", "name": "f", "input": {}}]}'),
]


@pytest.mark.parametrize(("name", "body"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_response_is_a_502(name: str, body: bytes) -> None:
    with pytest.raises(UpstreamError) as e:
        from_anthropic_response(body)
    assert e.value.status == 502 and e.value.code == "upstream_malformed_response"
    assert "anthropic" in e.value.message


def test_unknown_blocks_are_skipped() -> None:
    body = {"content": [{"type": "thinking", "thinking": "hmm", "signature": "x"}, {"type": "text", "text": "ok"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 2}}
    assert from_anthropic_response(body)["choices"][0]["message"]["content"] == "ok"


def _translate(raw: bytes, step: int, include_usage: bool = True) -> bytes:
    t = AnthropicStreamTranslator(include_usage=include_usage, created=1)
    return b"".join(t.feed(raw[i:i + step]) for i in range(0, len(raw), step)) + t.close()


@pytest.mark.parametrize("step", [1, 7, 100000])
def test_stream_text(step: int) -> None:
    got = assemble_openai(_translate(load_bytes("anthropic/stream_text.sse"), step))
    assert got == {"text": "Hello!", "tool_calls": [], "finish": "stop", "role": "assistant", "done": True,
                   "usage": {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}}


@pytest.mark.parametrize("step", [3, 100000])
def test_stream_tool_use(step: int) -> None:
    got = assemble_openai(_translate(load_bytes("anthropic/stream_tool_use.sse"), step))
    assert got["text"] == "Okay, let's check the weather for San Francisco, CA:"
    assert len(got["tool_calls"]) == 1
    call = got["tool_calls"][0]
    assert call["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert got["finish"] == "tool_calls" and got["done"]
    assert got["usage"] == {"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561}


def test_stream_without_usage_option_has_no_usage_chunk() -> None:
    assert assemble_openai(_translate(load_bytes("anthropic/stream_text.sse"), 50, include_usage=False))["usage"] is None


def test_stream_unknown_event_types_are_skipped() -> None:
    raw = load_bytes("anthropic/stream_text.sse").replace(
        b"event: ping\n", b"event: future_event\ndata: {\"type\": \"future_event\", \"x\": 1}\n\nevent: ping\n")
    assert assemble_openai(_translate(raw, 100000))["text"] == "Hello!"


START = b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":1}}}\n\n'
BROKEN_STREAMS = [
    ("invalid json line", START + b"event: content_block_delta\ndata: {not json\n\n"),
    ("delta before start", b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                           b'"delta":{"type":"text_delta","text":"x"}}\n\n'),
    ("delta without delta", START + b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0}\n\n'),
    ("text delta without text", START + b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                                        b'"delta":{"type":"text_delta"}}\n\n'),
    ("json delta for a text block", START + b'event: content_block_delta\ndata: {"type":"content_block_delta",'
                                            b'"index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}\n\n'),
    ("start without message", b'event: message_start\ndata: {"type":"message_start"}\n\n'),
    ("cut before message_stop", START + b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                                        b'"content_block":{"type":"text","text":""}}\n\n'),
    ("empty body", b""),
]


@pytest.mark.parametrize(("name", "raw"), BROKEN_STREAMS, ids=[b[0] for b in BROKEN_STREAMS])
def test_broken_stream_is_a_502(name: str, raw: bytes) -> None:
    t = AnthropicStreamTranslator()
    with pytest.raises(UpstreamError) as e:
        t.feed(raw)
        t.close()
    assert e.value.status == 502 and e.value.code == "upstream_malformed_response"


def test_stream_error_event_overloaded_is_retryable() -> None:
    t = AnthropicStreamTranslator()
    with pytest.raises(UpstreamError) as e:
        t.feed(load_bytes("anthropic/stream_error_overloaded.sse"))
    assert e.value.upstream_status == 529 and e.value.retryable and e.value.status == 503
    assert not t.started  # nothing went to the client: the router may fall back


ERRORS = [
    ("error_invalid_request.json", 400, False, 400, "invalid_request_error", None),
    ("error_authentication.json", 401, False, 502, "authentication_error", None),
    ("error_rate_limit.json", 429, True, 429, "rate_limit_error", "17"),
    ("error_overloaded.json", 529, True, 503, "overloaded_error", None),
    ("error_api.json", 500, True, 502, "api_error", None),
]


@pytest.mark.parametrize(("fixture", "upstream", "retryable", "status", "code", "retry_after"), ERRORS,
                         ids=[e[0] for e in ERRORS])
def test_error_mapping(fixture: str, upstream: int, retryable: bool, status: int, code: str,
                       retry_after: str | None) -> None:
    fx = load_json(f"anthropic/{fixture}")
    err = error_from_anthropic(fx["status"], json.dumps(fx["body"]).encode(), fx["headers"])
    assert (err.upstream_status, err.retryable, err.status, err.code) == (upstream, retryable, status, code)
    assert err.headers.get("retry-after") == retry_after
    assert fx["body"]["error"]["message"] in err.message
    assert err.to_openai()["error"]["code"] == code


def test_error_with_unreadable_body() -> None:
    err = error_from_anthropic(502, b"<html>bad gateway</html>")
    assert err.retryable and err.status == 502 and "bad gateway" in err.message
