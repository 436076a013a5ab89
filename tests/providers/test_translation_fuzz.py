"""Whatever an upstream sends, the translators answer with bytes or a typed UpstreamError, never a crash."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iir.backends.anthropic_openai import AnthropicEgress
from iir.backends.openai_anthropic import (
    AnthropicStreamTranslator,
    error_from_anthropic,
    from_anthropic_response,
)
from iir.backends.openai_gemini import GeminiStreamTranslator, error_from_gemini, from_gemini_response
from iir.backends.sse_reader import SSEDecoder
from iir.errors import UpstreamError

from .providers_kit import load_bytes

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["type", "index", "delta", "content", "text", "candidates", "parts",
                                         "functionCall", "name", "args", "error", "code", "message", "usage",
                                         "finishReason", "content_block", "partial_json", "id", "choices",
                                         "tool_calls", "function", "arguments", "promptFeedback", "blockReason"]),
                        inner, max_size=5), max_leaves=20)
EVENTS = st.sampled_from(["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                          "message_delta", "message_stop", "ping", "error", "something_new", ""])
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sse(events: list[tuple[str, Any]]) -> bytes:
    out = b""
    for name, data in events:
        if name:
            out += f"event: {name}\n".encode()
        out += b"data: " + json.dumps(data).encode() + b"\n\n"
    return out


def _drain(translator: Any, raw: bytes, step: int) -> None:
    try:
        for i in range(0, len(raw), step):
            assert isinstance(translator.feed(raw[i:i + step]), bytes)
        assert isinstance(translator.close(), bytes)
    except UpstreamError as e:
        assert e.status in (400, 429, 502, 503) and e.message


@FUZZ
@given(st.lists(st.tuples(EVENTS, JSON), max_size=8), st.integers(1, 64))
def test_anthropic_stream_never_crashes(events: list[tuple[str, Any]], step: int) -> None:
    _drain(AnthropicStreamTranslator(include_usage=True), _sse(events), step)


@FUZZ
@given(st.lists(JSON, max_size=6), st.integers(1, 64))
def test_gemini_stream_never_crashes(chunks: list[Any], step: int) -> None:
    _drain(GeminiStreamTranslator(include_usage=True), _sse([("", c) for c in chunks]), step)


@FUZZ
@given(st.binary(max_size=300), st.integers(1, 32))
def test_raw_bytes_never_crash(raw: bytes, step: int) -> None:
    _drain(AnthropicStreamTranslator(), raw, step)
    _drain(GeminiStreamTranslator(), raw, step)
    egress = AnthropicEgress("m")
    out = b"".join(egress.translate_stream(raw[i:i + step]) for i in range(0, len(raw), step)) + egress.finish_stream()
    assert isinstance(out, bytes)


@FUZZ
@given(JSON)
def test_whole_responses_never_crash(doc: Any) -> None:
    body = json.dumps(doc).encode()
    for translate in (from_anthropic_response, from_gemini_response):
        try:
            assert isinstance(translate(body), dict)
        except UpstreamError as e:
            assert e.status == 502
    for status in (400, 429, 500, 529):
        assert isinstance(error_from_anthropic(status, body), UpstreamError)
        assert isinstance(error_from_gemini(status, body), UpstreamError)
    assert isinstance(AnthropicEgress("m").translate_body(200, body), bytes)


@FUZZ
@given(st.lists(JSON, max_size=6), st.integers(1, 64))
def test_egress_never_crashes_on_openai_like_chunks(chunks: list[Any], step: int) -> None:
    raw = _sse([("", c) for c in chunks]) + b"data: [DONE]\n\n"
    egress = AnthropicEgress("m")
    out = b"".join(egress.translate_stream(raw[i:i + step]) for i in range(0, len(raw), step)) + egress.finish_stream()
    assert out.endswith(b"\n\n")


@given(st.integers(1, 200))
def test_sse_decoder_is_split_invariant(step: int) -> None:
    raw = load_bytes("anthropic/stream_tool_use.sse")
    whole = SSEDecoder().feed(raw)
    dec = SSEDecoder()
    parts = [ev for i in range(0, len(raw), step) for ev in dec.feed(raw[i:i + step])] + dec.close()
    assert parts == whole and len(whole) == 30


@pytest.mark.parametrize("value", ["12", None, True, [3], {"n": 1}, float("inf"), float("nan")])
def test_non_numeric_usage_counts_as_zero(value: Any) -> None:
    """Token counts of the wrong type (a string, a bool, a list, non-finite) read as 0 in every direction."""
    anthropic = from_anthropic_response({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "hi"}],
        "usage": {"input_tokens": value, "output_tokens": 4, "cache_read_input_tokens": value}})
    assert anthropic["usage"]["prompt_tokens"] == 0 and anthropic["usage"]["completion_tokens"] == 4
    gemini = from_gemini_response({
        "candidates": [{"index": value, "content": {"role": "model", "parts": [{"text": "hi"}]},
                        "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": value, "totalTokenCount": value}})
    assert gemini["choices"][0]["index"] == 0
    assert gemini["usage"] == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
    egress = AnthropicEgress("m")
    out = egress.translate_body(200, orjson.dumps({  # orjson writes inf/nan as null
        "id": "c", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": value, "completion_tokens": 2,
                  "prompt_tokens_details": {"cached_tokens": value}}}))
    assert json.loads(out)["usage"] == {"input_tokens": 0, "output_tokens": 2}
