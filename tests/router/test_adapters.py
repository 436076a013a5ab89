"""Adapters are pure translators: checked here without a network."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from iir.backends.adapters import load_adapters
from iir.backends.openai_agent import ADAPTER as AGENT
from iir.backends.openai_openai import ADAPTER as OPENAI
from iir.errors import BadRequestError, UpstreamError
from iir.pipeline.auth import admin_allowed, presented_key
from iir.table import AuthTable, Backend


@dataclass
class Req:
    endpoint: str = "chat"
    body: dict[str, Any] = field(default_factory=dict)
    model: str = "client-name"
    stream: bool = False
    request_id: str = "rid1"

    @property
    def raw(self) -> bytes:
        return orjson.dumps(self.body)


def _backend(**kw: Any) -> Backend:
    base = {"name": "b", "kind": "vllm", "protocol": "openai", "base_url": "http://h:1/v1", "models": ("client-name",)}
    return Backend(**{**base, **kw})


def test_registry_has_both_router_adapters():
    adapters = load_adapters()
    assert adapters["openai"] is OPENAI and adapters["agent"] is AGENT


def test_openai_build_passes_body_bytes_and_maps_model():
    req = Req(body={"model": "client-name", "messages": [{"role": "user", "content": "hi"}], "top_k": 3})
    raw = req.raw
    up = OPENAI.build(req, _backend(api_key="sk-1", headers=(("x-extra", "1"),)))
    assert up.url == "http://h:1/v1/chat/completions" and up.body == raw
    assert up.headers["authorization"] == "Bearer sk-1" and up.headers["x-extra"] == "1"
    mapped = OPENAI.build(req, _backend(model_map=MappingProxyType({"client-name": "org/Real-7B"})))
    assert orjson.loads(mapped.body) == {**req.body, "model": "org/Real-7B"}


@pytest.mark.parametrize("name", ["plain", 'we"ird\\name', "uni-ß-∂"])
def test_passthrough_stream_rewrites_only_the_model_field(name):
    req = Req(model=name, stream=True, body={"stream_options": {"include_usage": True}})  # usage chunk kept
    t = OPENAI.stream_translator(req, _backend())
    content = 'say \\"model\\": \\"x\\" please'
    block = (b'data: {"id":"1","model":"up\\"stream","choices":[{"delta":{"content":"' + content.encode() + b'"}}]}\n\n'
             b'data: {"model": "up", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}\n\n'
             b"data: [DONE]\n\n")
    out = b"".join(t.feed(block))
    events = [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: {")]
    assert [e["model"] for e in events] == [name, name]
    assert events[0]["choices"][0]["delta"]["content"] == 'say \\"model\\": \\"x\\" please'.replace('\\"', '"')
    assert t.usage == {"prompt_tokens": 2, "completion_tokens": 3} and t.done


def test_openai_translate_response_rejects_garbage():
    with pytest.raises(UpstreamError):
        OPENAI.translate_response(Req(), _backend(), b"<html>")
    body, usage = OPENAI.translate_response(Req(), _backend(), b'{"model":"x","usage":{"prompt_tokens":1}}')
    assert orjson.loads(body)["model"] == "client-name" and usage == {"prompt_tokens": 1}


def test_openai_error_retryable_and_retry_after():
    err = OPENAI.error(429, b'{"error":{"message":"slow down"}}', {"retry-after": "2"})
    assert err.retryable and err.upstream_status == 429 and err.retry_after == 2.0 and "slow down" in err.message
    assert OPENAI.error(503, b"down", {}).retryable
    assert not OPENAI.error(400, b"{}", {}).retryable


def test_agent_build_and_translate():
    req = Req(body={"model": "client-name", "max_completion_tokens": 9, "temperature": 0, "tools": [],
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                              {"type": "text", "text": "b"}]}]})
    up = AGENT.build(req, _backend(protocol="agent", kind="agent", base_url="http://h:5000"))
    assert up.url == "http://h:5000/infer"
    assert orjson.loads(up.body) == {"messages": [{"role": "user", "content": "ab"}], "max_tokens": 9,
                                     "temperature": 0, "stream": False}
    body, usage = AGENT.translate_response(req, _backend(), b'{"text":"hey","finish_reason":"length",'
                                                            b'"usage":{"prompt_tokens":1,"completion_tokens":2}}')
    out = orjson.loads(body)
    assert out["object"] == "chat.completion" and out["model"] == "client-name"
    assert out["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "hey"},
                                 "logprobs": None, "finish_reason": "length"}
    assert usage == out["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


@pytest.mark.parametrize("extra,param", [({"tools": [{"type": "function"}]}, "tools"),
                                         ({"functions": [{"name": "f"}]}, "tools"), ({"n": 3}, "n")])
def test_agent_build_refuses_what_the_agent_protocol_cannot_carry(extra, param):
    req = Req(body={"model": "client-name", "messages": [{"role": "user", "content": "a"}], **extra})
    with pytest.raises(BadRequestError) as e:
        AGENT.build(req, _backend(protocol="agent", kind="agent", base_url="http://h:5000"))
    assert e.value.param == param and e.value.status == 400


def test_agent_stream_translation_and_in_stream_error():
    req = Req(stream=True, body={"stream_options": {"include_usage": True}})
    t = AGENT.stream_translator(req, _backend())
    out = t.feed(b'data: {"text": "He"}\n\ndata: {"text": "llo"}\n\n'
                 b'data: {"finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n'
                 b"data: [DONE]\n\n")
    events = [orjson.loads(c[6:]) for c in out]
    assert [e["choices"][0]["delta"].get("content") for e in events[:2]] == ["He", "llo"]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[2]["choices"][0]["finish_reason"] == "stop" and events[3]["usage"]["total_tokens"] == 3
    assert t.done and t.finish() == [b"data: [DONE]\n\n"]
    t2 = AGENT.stream_translator(req, _backend())
    out = t2.feed(b'data: {"text": "x"}\n\ndata: {"error": {"message": "oom"}}\n\n')
    assert len(out) == 1 and t2.error is not None and "oom" in t2.error.message


def test_presented_key_and_admin_guard():
    req = make_mocked_request("GET", "/admin/", headers={"Authorization": "Bearer tok-123"})
    assert presented_key(req) == "tok-123"
    assert presented_key(make_mocked_request("GET", "/", headers={"x-api-key": " k "})) == "k"
    assert presented_key(make_mocked_request("GET", "/", headers={"Authorization": "Basic abc"})) is None
    import hashlib

    with_token = AuthTable(admin_token_sha256=hashlib.sha256(b"tok-123").digest())
    assert admin_allowed(with_token, req)
    assert not admin_allowed(with_token, make_mocked_request("GET", "/admin/"))
    no_token = AuthTable()
    remote = make_mocked_request("GET", "/admin/", transport=_Transport(("10.1.2.3", 5555)))
    local = make_mocked_request("GET", "/admin/", transport=_Transport(("127.0.0.1", 5555)))
    assert not admin_allowed(no_token, remote) and admin_allowed(no_token, local)


class _Transport:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default
