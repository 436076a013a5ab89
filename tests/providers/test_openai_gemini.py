"""OpenAI chat → Gemini generateContent and back: table-driven, fixtures from Google's docs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from iir.backends.openai_gemini import (
    GeminiStreamTranslator,
    error_from_gemini,
    from_gemini_response,
    to_gemini_request,
)
from iir.errors import BadRequestError, UpstreamError

from .providers_kit import assemble_openai, load_bytes, load_json

U = {"role": "user", "content": "Hi"}
TOOL = {"type": "function", "function": {"name": "get_current_temperature", "description": "Temperature now",
                                         "parameters": {"type": "object", "additionalProperties": False,
                                                        "properties": {"location": {"type": "string"}},
                                                        "required": ["location"]}}}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_current_temperature", "arguments": '{"location": "London"}'}}

REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain", {"messages": [U]}, {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}),
    ("system and multi-turn", {"messages": [{"role": "system", "content": "Be brief."}, U,
                                            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Again"}]},
     {"systemInstruction": {"parts": [{"text": "Be brief."}]},
      "contents": [{"role": "user", "parts": [{"text": "Hi"}]}, {"role": "model", "parts": [{"text": "Hello!"}]},
                   {"role": "user", "parts": [{"text": "Again"}]}]}),
    ("generation config", {"messages": [U], "temperature": 0.3, "top_p": 0.8, "max_tokens": 64, "stop": "END",
                           "seed": 7, "n": 2, "presence_penalty": 0.1, "frequency_penalty": 0.2},
     {"generationConfig": {"temperature": 0.3, "topP": 0.8, "maxOutputTokens": 64, "stopSequences": ["END"],
                           "seed": 7, "candidateCount": 2, "presencePenalty": 0.1, "frequencyPenalty": 0.2}}),
    ("json mode", {"messages": [U], "response_format": {"type": "json_object"}},
     {"generationConfig": {"responseMimeType": "application/json"}}),
    ("json schema", {"messages": [U], "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}},
     {"generationConfig": {"responseMimeType": "application/json",
                           "responseJsonSchema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}),
    ("images", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
        {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}]}]},
     {"contents": [{"role": "user", "parts": [{"text": "Describe"}, {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
                                              {"fileData": {"mimeType": "image/png", "fileUri": "https://example.org/cat.png"}}]}]}),
    ("tools", {"messages": [U], "tools": [TOOL], "tool_choice": "required"},
     {"tools": [{"functionDeclarations": [{"name": "get_current_temperature", "description": "Temperature now",
                                           "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                                                          "required": ["location"]}}]}],
      "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}),
    ("named tool", {"messages": [U], "tools": [TOOL],
                    "tool_choice": {"type": "function", "function": {"name": "get_current_temperature"}}},
     {"toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_current_temperature"]}}}),
    ("tool round trip", {"messages": [U, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                                      {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 15}'},
                                      {"role": "assistant", "content": "It is 15 C."},
                                      {"role": "user", "content": "And Paris?"},
                                      {"role": "assistant", "tool_calls": [dict(CALL, id="call_2")]},
                                      {"role": "tool", "tool_call_id": "call_2", "content": "sunny, 18 C"}]},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]},
                   {"role": "model", "parts": [{"functionCall": {"name": "get_current_temperature", "args": {"location": "London"}}}]},
                   {"role": "user", "parts": [{"functionResponse": {"name": "get_current_temperature",
                                                                    "response": {"temperature": 15}}}]},
                   {"role": "model", "parts": [{"text": "It is 15 C."}]},
                   {"role": "user", "parts": [{"text": "And Paris?"}]},
                   {"role": "model", "parts": [{"functionCall": {"name": "get_current_temperature", "args": {"location": "London"}}}]},
                   {"role": "user", "parts": [{"functionResponse": {"name": "get_current_temperature",
                                                                    "response": {"result": "sunny, 18 C"}}}]}]}),
]


@pytest.mark.parametrize(("name", "body", "expected"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_translation(name: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = to_gemini_request(body)
    for key, value in expected.items():
        assert out[key] == value, key
    assert "model" not in out and "stream" not in out  # both go in the URL
    json.dumps(out)


BAD_REQUESTS = [
    ("no messages", {"messages": []}, "messages"),
    ("unknown role", {"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ("orphan tool result", {"messages": [U, {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
     "messages[1].tool_call_id"),
    ("bad tool args", {"messages": [U, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}, "messages[1].tool_calls[0]"),
    ("file part", {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}, "messages[0].content[0]"),
    ("bad tool_choice", {"messages": [U], "tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
]


@pytest.mark.parametrize(("name", "body", "param"), BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_request_rejections(name: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as e:
        to_gemini_request(body)
    assert e.value.param == param


RESPONSES = [
    ("generate_text.json", "AI learns patterns from data to make predictions or decisions.", [], "stop", (8, 12, 20)),
    ("generate_function_call.json", None, [("get_current_temperature", {"location": "London"})], "tool_calls", (55, 7, 62)),
    ("generate_max_tokens.json", "The three laws are", [], "length", (10, 25, 35)),
    ("generate_finish_safety.json", "", [], "content_filter", (12, 0, 12)),
    ("generate_prompt_blocked.json", None, [], "content_filter", (9, 0, 9)),
]


@pytest.mark.parametrize(("fixture", "text", "calls", "finish", "usage"), RESPONSES, ids=[r[0] for r in RESPONSES])
def test_response_translation(fixture: str, text: str | None, calls: list[Any], finish: str,
                              usage: tuple[int, int, int]) -> None:
    out = from_gemini_response(load_json(f"gemini/{fixture}"), created=3)
    assert out["object"] == "chat.completion" and out["model"] == "gemini-2.5-flash"
    choice = out["choices"][0]
    assert choice["message"]["content"] == text
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in choice["message"].get("tool_calls", [])]
    assert got == calls
    assert all(c["id"].startswith("call_") for c in choice["message"].get("tool_calls", []))
    assert choice["finish_reason"] == finish
    u = out["usage"]
    assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == usage


def test_usage_details() -> None:
    u = from_gemini_response(load_json("gemini/generate_max_tokens.json"))["usage"]
    assert u["prompt_tokens_details"] == {"cached_tokens": 4}
    assert u["completion_tokens_details"] == {"reasoning_tokens": 20}


def test_thought_parts_are_not_answer_text() -> None:
    doc = {"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking...", "thought": True},
                                                                  {"text": "42"}]}, "finishReason": "STOP"}]}
    assert from_gemini_response(doc)["choices"][0]["message"]["content"] == "42"


MALFORMED = [
    ("not json", b"upstream connect error"),
    ("array", b"[]"),
    ("no candidates no feedback", b'{"usageMetadata": {"promptTokenCount": 1}}'),
    ("empty candidates", b'{"candidates": []}'),
    ("candidate not object", b'{"candidates": ["x"]}'),
    ("parts not list", b'{"candidates": [{"content": {"parts": "x"}}]}'),
    ("function call without name", b'{"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}'),
]


@pytest.mark.parametrize(("name", "body"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_response_is_a_502(name: str, body: bytes) -> None:
    with pytest.raises(UpstreamError) as e:
        from_gemini_response(body)
    assert e.value.status == 502 and e.value.code == "upstream_malformed_response"


def _translate(raw: bytes, step: int, include_usage: bool = True) -> bytes:
    t = GeminiStreamTranslator(include_usage=include_usage, created=1)
    return b"".join(t.feed(raw[i:i + step]) for i in range(0, len(raw), step)) + t.close()


@pytest.mark.parametrize("step", [1, 13, 100000])
def test_stream_text(step: int) -> None:
    got = assemble_openai(_translate(load_bytes("gemini/stream_text.sse"), step))
    assert got == {"text": "Once upon a time, in a quiet library, a book learned to read.", "tool_calls": [],
                   "finish": "stop", "role": "assistant", "done": True,
                   "usage": {"prompt_tokens": 8, "completion_tokens": 14, "total_tokens": 22}}


def test_stream_function_call() -> None:
    got = assemble_openai(_translate(load_bytes("gemini/stream_function_call.sse"), 9))
    assert got["text"] == "Let me look that up."
    assert [(c["name"], json.loads(c["arguments"])) for c in got["tool_calls"]] == [
        ("get_current_temperature", {"location": "London"})]
    assert got["tool_calls"][0]["id"].startswith("call_")
    assert got["finish"] == "tool_calls"
    assert got["usage"] == {"prompt_tokens": 55, "completion_tokens": 12, "total_tokens": 67}


def test_stream_safety_stop() -> None:
    got = assemble_openai(_translate(load_bytes("gemini/stream_safety.sse"), 100000, include_usage=False))
    assert got["text"] == "Here is" and got["finish"] == "content_filter" and got["usage"] is None


def test_stream_blocked_prompt() -> None:
    raw = b'data: {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 4}}\n\n'
    got = assemble_openai(_translate(raw, 100000))
    assert got["finish"] == "content_filter" and got["text"] == "" and got["done"]


BROKEN_STREAMS = [
    ("invalid json line", b'data: {"candidates": [{"content": {"parts": [{"text": "a"}]}}]}\n\ndata: {oops\n\n'),
    ("candidates not list", b'data: {"candidates": {"x": 1}}\n\n'),
    ("cut before finish", b'data: {"candidates": [{"content": {"parts": [{"text": "a"}]}}]}\n\n'),
    ("empty body", b""),
]


@pytest.mark.parametrize(("name", "raw"), BROKEN_STREAMS, ids=[b[0] for b in BROKEN_STREAMS])
def test_broken_stream_is_a_502(name: str, raw: bytes) -> None:
    t = GeminiStreamTranslator()
    with pytest.raises(UpstreamError) as e:
        t.feed(raw)
        t.close()
    assert e.value.status == 502 and e.value.code == "upstream_malformed_response"


def test_error_event_in_stream() -> None:
    t = GeminiStreamTranslator()
    with pytest.raises(UpstreamError) as e:
        t.feed(b'data: {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}\n\n')
    assert e.value.retryable and e.value.upstream_status == 503


ERRORS = [
    ("error_invalid_argument.json", 400, False, 400, "INVALID_ARGUMENT", None),
    ("error_api_key_invalid.json", 401, False, 502, "INVALID_ARGUMENT", None),
    ("error_permission_denied.json", 403, False, 502, "PERMISSION_DENIED", None),
    ("error_resource_exhausted.json", 429, True, 429, "RESOURCE_EXHAUSTED", "17"),
    ("error_unavailable.json", 503, True, 503, "UNAVAILABLE", None),
]


@pytest.mark.parametrize(("fixture", "upstream", "retryable", "status", "code", "retry_after"), ERRORS,
                         ids=[e[0] for e in ERRORS])
def test_error_mapping(fixture: str, upstream: int, retryable: bool, status: int, code: str,
                       retry_after: str | None) -> None:
    fx = load_json(f"gemini/{fixture}")
    err = error_from_gemini(fx["status"], json.dumps(fx["body"]).encode(), fx["headers"])
    assert (err.upstream_status, err.retryable, err.status, err.code) == (upstream, retryable, status, code)
    assert err.headers.get("retry-after") == retry_after
    assert fx["body"]["error"]["message"] in err.message


def test_retry_after_header_wins_over_retry_info() -> None:
    fx = load_json("gemini/error_resource_exhausted.json")
    err = error_from_gemini(429, json.dumps(fx["body"]).encode(), {"Retry-After": "3"})
    assert err.headers["retry-after"] == "3"


def test_thought_signature_round_trips_through_the_tool_call_id() -> None:
    fx = load_json("gemini/generate_function_call_signature.json")
    signature = fx["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    out = from_gemini_response(fx)
    call = out["choices"][0]["message"]["tool_calls"][0]
    assert call["id"].endswith("__thought__" + signature)
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 40}
    back = to_gemini_request({"messages": [U, {"role": "assistant", "content": None, "tool_calls": [call]},
                                           {"role": "tool", "tool_call_id": call["id"], "content": "on time"}]})
    assert back["contents"][1]["parts"] == [{"functionCall": {"name": "check_flight", "args": {"flight": "AA100"}},
                                             "thoughtSignature": signature}]
    assert back["contents"][2]["parts"][0]["functionResponse"]["name"] == "check_flight"


def test_thought_signature_in_a_stream() -> None:
    raw = (b'data: {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}},'
           b' "thoughtSignature": "c2ln"}]}, "finishReason": "STOP"}]}\n\n')
    got = assemble_openai(_translate(raw, 100000))
    assert got["tool_calls"][0]["id"].endswith("__thought__c2ln")


def test_blocked_prompt_with_empty_candidates() -> None:
    out = from_gemini_response({"candidates": [], "promptFeedback": {"blockReason": "OTHER"}})
    assert out["choices"][0]["finish_reason"] == "content_filter"


def test_unknown_parts_and_fields_are_skipped() -> None:
    """Part kinds and fields iir does not know (code execution, future additions) are ignored,
    in whole responses and in streams; the text and calls around them come through."""
    cand = {"content": {"role": "model", "parts": [
        {"executableCode": {"language": "PYTHON", "code": "print(1)"}}, {"text": "one"},
        {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "1"}}, {"somethingNew": {"x": 1}},
        {"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP", "futureField": [1]}
    out = from_gemini_response({"candidates": [cand], "brandNewTopLevel": {"y": 2}})
    message = out["choices"][0]["message"]
    assert message["content"] == "one" and message["tool_calls"][0]["function"]["name"] == "f"
    raw = b'data: {"brandNew": true}\n\ndata: ' + json.dumps({"candidates": [cand]}).encode() + b"\n\n"
    got = assemble_openai(_translate(raw, 5))
    assert got["text"] == "one" and got["tool_calls"][0]["name"] == "f" and got["finish"] == "tool_calls"
