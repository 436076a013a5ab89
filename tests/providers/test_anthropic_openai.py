"""Anthropic Messages request → OpenAI chat, and OpenAI output → Anthropic output (ingress egress)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from iir.backends.anthropic_openai import AnthropicEgress, anthropic_error, to_openai_request
from iir.errors import BadRequestError

from .providers_kit import anthropic_events, load_bytes, load_json

BASE = {"model": "claude-x", "max_tokens": 100}
TOOL = {"name": "get_weather", "description": "Weather now",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}

REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain", {"messages": [{"role": "user", "content": "Hello"}]},
     {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "Hello"}]}),
    ("system blocks and multi-turn", {"system": [{"type": "text", "text": "Be brief."}],
                                      "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                                                   {"role": "assistant", "content": "Hello!"},
                                                   {"role": "user", "content": "Again"}]},
     {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Again"}]}),
    ("image", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
        {"type": "text", "text": "What?"}]}]},
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                                                {"type": "text", "text": "What?"}]}]}),
    ("tools and choice", {"messages": [{"role": "user", "content": "Weather?"}], "tools": [TOOL],
                          "tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
     {"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                                  "parameters": TOOL["input_schema"]}}],
      "tool_choice": "required", "parallel_tool_calls": False}),
    ("named tool", {"messages": [{"role": "user", "content": "x"}], "tools": [TOOL],
                    "tool_choice": {"type": "tool", "name": "get_weather"}},
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ("tool round trip", {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "...", "signature": "s"},
                                          {"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"location": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "15 C"}]},
                                     {"type": "text", "text": "And tomorrow?"}]}], "tools": [TOOL]},
     {"messages": [{"role": "user", "content": "Weather in Paris?"},
                   {"role": "assistant", "content": "Checking.", "tool_calls": [
                       {"id": "toolu_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}]},
                   {"role": "tool", "tool_call_id": "toolu_1", "content": "15 C"},
                   {"role": "user", "content": "And tomorrow?"}]}),
    ("error tool result", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "timeout", "is_error": True}]}]},
     {"messages": [{"role": "tool", "tool_call_id": "t", "content": "Error: timeout"}]}),
    ("sampling, stops, stream", {"messages": [{"role": "user", "content": "x"}], "temperature": 0.2, "top_p": 0.9,
                                 "stop_sequences": ["END"], "stream": True, "metadata": {"user_id": "u1"}},
     {"temperature": 0.2, "top_p": 0.9, "stop": ["END"], "stream": True, "stream_options": {"include_usage": True},
      "user": "u1"}),
]


@pytest.mark.parametrize(("name", "body", "expected"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_translation(name: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = to_openai_request({**BASE, **body})
    for key, value in expected.items():
        assert out[key] == value, key


BAD = [
    ("no model", {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ("no max_tokens", {"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ("bool max_tokens", {"model": "m", "max_tokens": True, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ("no messages", {**BASE, "messages": []}, "messages"),
    ("system role in messages", {**BASE, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ("document block", {**BASE, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
     "messages.0.content[0]"),
    ("server tool", {**BASE, "messages": [{"role": "user", "content": "x"}],
                     "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ("bad tool_choice", {**BASE, "messages": [{"role": "user", "content": "x"}], "tools": [TOOL],
                         "tool_choice": {"type": "sometimes"}}, "tool_choice"),
]


@pytest.mark.parametrize(("name", "body", "param"), BAD, ids=[b[0] for b in BAD])
def test_request_rejections(name: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as e:
        to_openai_request(body)
    assert e.value.param == param


def test_body_text_response() -> None:
    egress = AnthropicEgress("claude-x")
    out = json.loads(egress.translate_body(200, json.dumps(load_json("openai/chat_completion.json")).encode()))
    assert out["type"] == "message" and out["role"] == "assistant" and out["model"] == "claude-x"
    assert out["id"].startswith("msg_")
    assert out["content"] == [{"type": "text", "text": "Hello! How can I assist you today?"}]
    assert out["stop_reason"] == "end_turn" and out["stop_sequence"] is None
    assert out["usage"] == {"input_tokens": 19, "output_tokens": 10}


def test_body_tool_call_response() -> None:
    out = json.loads(AnthropicEgress("c").translate_body(
        200, json.dumps(load_json("openai/chat_completion_tool_calls.json")).encode()))
    assert out["content"] == [{"type": "tool_use", "id": "call_abc123", "name": "get_current_weather",
                               "input": {"location": "Boston, MA"}}]
    assert out["stop_reason"] == "tool_use"


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (401, "authentication_error"),
                                              (403, "permission_error"), (404, "not_found_error"),
                                              (429, "rate_limit_error"), (502, "api_error"),
                                              (503, "overloaded_error"), (504, "timeout_error")])
def test_error_bodies(status: int, kind: str) -> None:
    envelope = {"error": {"message": "nope", "type": "x", "param": None, "code": "y"}}
    out = json.loads(AnthropicEgress("c").translate_body(status, json.dumps(envelope).encode()))
    assert out == {"type": "error", "error": {"type": kind, "message": "nope"}}
    assert anthropic_error(status, "nope") == out


def test_unreadable_body_becomes_an_api_error() -> None:
    out = json.loads(AnthropicEgress("c").translate_body(200, b"\x00garbage"))
    assert out["type"] == "error" and out["error"]["type"] == "api_error"


def _stream(raw: bytes, step: int) -> bytes:
    egress = AnthropicEgress("claude-x")
    return b"".join(egress.translate_stream(raw[i:i + step]) for i in range(0, len(raw), step)) + egress.finish_stream()


@pytest.mark.parametrize("step", [1, 11, 100000])
def test_stream_text(step: int) -> None:
    events = anthropic_events(_stream(load_bytes("openai/stream_text.sse"), step))
    names = [n for n, _ in events]
    assert names == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    assert events[0][1]["message"]["model"] == "claude-x"
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Hello there!"
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"] == {"input_tokens": 9, "output_tokens": 3}


def test_stream_tool_calls() -> None:
    events = anthropic_events(_stream(load_bytes("openai/stream_tool_calls.sse"), 17))
    starts = [d for n, d in events if n == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use"]
    assert starts[0]["content_block"]["id"] == "call_DdmO9pD3xa9XTPNJ32zg2hcA"
    args = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(args) == {"location": "Paris, France"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-1][0] == "message_stop"


def test_stream_text_then_two_tools_gets_three_blocks() -> None:
    chunks = [{"choices": [{"index": 0, "delta": {"content": "Let me check."}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
    raw = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    events = anthropic_events(_stream(raw, 100000))
    starts = [(d["index"], d["content_block"]["type"]) for n, d in events if n == "content_block_start"]
    stops = [d["index"] for n, d in events if n == "content_block_stop"]
    assert starts == [(0, "text"), (1, "tool_use"), (2, "tool_use")] and stops == [0, 1, 2]


def test_stream_error_event_mid_stream() -> None:
    raw = (b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
           b'data: {"error": {"message": "backend broke", "type": "upstream_error", "code": "upstream_error"}}\n\n')
    events = anthropic_events(_stream(raw, 100000))
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "backend broke"}})


@pytest.mark.parametrize("raw", [b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n',  # no finish
                                 b"data: {broken\n\n"])
def test_stream_cut_or_garbled_ends_with_error_event(raw: bytes) -> None:
    events = anthropic_events(_stream(raw, 100000))
    assert events[-1][0] == "error"
