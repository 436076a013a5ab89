"""Bad input gets the right status, OpenAI's error shape, and no traceback in the log; auth and admin."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import openai
import pytest

from tests.router.conftest import base

SPEC = """
version: 1
server: {{max_body: 1MiB}}
state: {{registry: "{{registry}}"}}
auth:
  admin_token: "${{ADMIN}}"
  keys:
    - {{name: ci, key: "${{KEY_CI}}", models: ["local/*"]}}
    - {{name: all, key: "${{KEY_ALL}}"}}
backends:
  up: {{kind: openai-compatible, url: "{up}", models: [gpt-test, local/small]}}
routes:
  - name: by-model
    match: {{model: "*"}}
    to: by-model
"""
ENV = {"ADMIN": "admin-secret-1", "KEY_CI": "key-ci-123456", "KEY_ALL": "key-all-123456"}
GOOD = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}'
AUTH = {"authorization": "Bearer key-all-123456"}


@pytest.fixture
async def srv(upstreams, router):
    up = await upstreams()
    return await router(SPEC.format(up=up.url), env=ENV)


async def _post(url: str, data: bytes, headers: dict[str, str] | None = None,
                path: str = "/v1/chat/completions") -> tuple[int, dict]:
    hdrs = {"content-type": "application/json", **AUTH, **(headers or {})}
    async with aiohttp.ClientSession() as s, s.post(url + path, data=data, headers=hdrs) as r:
        return r.status, await r.json(content_type=None)


def _assert_openai_error(body: dict, code: str | None = None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


@pytest.mark.parametrize(("data", "status", "code", "param"), [
    (b"this is not json", 400, "invalid_json", None),
    (b"[1, 2, 3]", 400, "invalid_json", None),
    (b'"a string"', 400, "invalid_json", None),
    (b"", 400, "invalid_json", None),
    (b'{"model": "gpt-test"}', 400, "missing_required_parameter", "messages"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "missing_required_parameter", "model"),
    (b'{"model": 42, "messages": []}', 400, "invalid_type", "model"),
    (b'{"model": "gpt-test", "messages": "hi"}', 400, "invalid_type", "messages"),
    (b'{"model": "gpt-test", "messages": []}', 400, "invalid_value", "messages"),
    (b'{"model": "gpt-test", "messages": [{"content": "hi"}]}', 400, "invalid_type", "messages[0].role"),
    (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400,
     "invalid_type", "stream"),
    (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400,
     "invalid_type", "temperature"),
    (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5}', 400,
     "invalid_type", "max_tokens"),
    (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "invalid_encoding", None),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found", "model"),
])
async def test_bad_bodies(srv, caplog, data, status, code, param):
    caplog.set_level(logging.DEBUG)
    got, body = await _post(base(srv), data)
    assert got == status
    _assert_openai_error(body, code)
    assert body["error"]["param"] == param
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_empty_body_says_it_is_empty(srv):
    status, body = await _post(base(srv), b"")  # Content-Length: 0
    assert status == 400 and body["error"]["message"] == "request body is empty; send a JSON object"


async def test_unknown_model_lists_available(srv):
    _, body = await _post(base(srv), b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}')
    assert "gpt-test" in body["error"]["message"] and "local/small" in body["error"]["message"]


async def test_body_over_max_body_is_413(srv, caplog):
    big = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "' + b"x" * (10 * 1024 * 1024) + b'"}]}'
    status, body = await _post(base(srv), big)
    assert status == 413
    _assert_openai_error(body, "request_too_large")
    assert not [r for r in caplog.records if r.exc_info]


async def test_unsupported_content_type_is_415(srv, caplog):
    caplog.set_level(logging.DEBUG)
    status, body = await _post(base(srv), b"model=gpt-test", {"content-type": "application/x-www-form-urlencoded"})
    assert status == 415
    _assert_openai_error(body, "unsupported_media_type")
    assert not [r for r in caplog.records if r.exc_info]


async def test_header_of_64kb_is_a_clean_4xx(srv, caplog):
    status, body = await _post(base(srv), GOOD, {"x-big": "a" * 64 * 1024})
    assert status == 431
    _assert_openai_error(body, "request_header_too_large")
    assert not [r for r in caplog.records if r.exc_info]


async def test_unknown_path_and_method_are_openai_shaped(srv):
    async with aiohttp.ClientSession() as s:
        async with s.get(base(srv) + "/v1/nothing-here") as r:
            assert r.status == 404
            _assert_openai_error(await r.json())
        async with s.get(base(srv) + "/v1/chat/completions") as r:
            assert r.status == 405
            _assert_openai_error(await r.json(), "method_not_allowed")


async def test_auth_missing_wrong_bearer_and_x_api_key(srv, sdk, caplog):
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as s:
        for headers, status, code in [
            ({}, 401, "invalid_api_key"),
            ({"authorization": "Bearer wrong-key"}, 401, "invalid_api_key"),
            ({"x-api-key": "wrong-key"}, 401, "invalid_api_key"),
            ({"x-api-key": "key-all-123456"}, 200, None),
            ({"authorization": "Bearer key-ci-123456"}, 403, "model_not_allowed"),  # glob local/* only
        ]:
            async with s.post(base(srv) + "/v1/chat/completions", data=GOOD,
                              headers={"content-type": "application/json", **headers}) as r:
                assert r.status == status, headers
                if code:
                    _assert_openai_error(await r.json(), code)
    client = sdk(srv, "key-ci-123456")
    ok = await client.chat.completions.create(model="local/small", messages=[{"role": "user", "content": "x"}])
    assert ok.model == "local/small"
    with pytest.raises(openai.PermissionDeniedError):
        await client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        bad = sdk(srv, "nope")
        await bad.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x"}])
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_model_listing_needs_a_key_and_shows_what_it_may_use(srv, sdk):
    """As OpenAI: no key, no model list (it names the backends); a restricted key sees its models."""
    async with aiohttp.ClientSession() as s:
        for path in ("/v1/models", "/v1/models/gpt-test"):
            async with s.get(base(srv) + path) as r:
                assert r.status == 401, path
                _assert_openai_error(await r.json(), "invalid_api_key")
            async with s.get(base(srv) + path, headers={"authorization": "Bearer wrong-key"}) as r:
                assert r.status == 401, path
    assert {m.id async for m in sdk(srv, "key-all-123456").models.list()} == {"gpt-test", "local/small"}
    ci = sdk(srv, "key-ci-123456")
    assert [m.id async for m in ci.models.list()] == ["local/small"]
    assert (await ci.models.retrieve("local/small")).owned_by == "up"
    with pytest.raises(openai.NotFoundError):
        await ci.models.retrieve("gpt-test")


@pytest.mark.parametrize("header", [b"Authorization: Bearer sk-proj-UNKNOWN-4242\x01",
                                    b"x-api-key: sk-proj-UNKNOWN-4242\x01"])
async def test_malformed_credential_header_is_not_logged(srv, caplog, header):
    """aiohttp's parser error quotes the bad header line: a client's key must not reach the log."""
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nContent-Length: 2\r\n\r\n{}")
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert b" 400 " in status
    for _ in range(100):
        if any(r.name == "iir.http" for r in caplog.records):
            break
        await asyncio.sleep(0.01)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Invalid header value" in text and "UNKNOWN-4242" not in text and "***" in text


async def test_admin_shows_no_password_of_a_backend_url(upstreams, router):
    up = await upstreams()
    with_auth = up.url.replace("http://", "http://ops:pw-SECRET-8642@")
    srv = await router(SPEC.format(up=with_auth), env=ENV)
    async with aiohttp.ClientSession() as s, s.get(base(srv) + "/admin/",
                                                   headers={"authorization": "Bearer admin-secret-1"}) as r:
        text = await r.text()
    assert r.status == 200 and "pw-SECRET-8642" not in text and "ops:***@" in text


async def test_keys_never_logged(srv, caplog):
    caplog.set_level(logging.DEBUG)
    await _post(base(srv), GOOD)
    await _post(base(srv), GOOD, {"authorization": "Bearer key-guess-999"})
    text = "\n".join(r.getMessage() + str(getattr(r, "fields", "")) for r in caplog.records)
    assert "key-all-123456" not in text and "key-guess-999" not in text


async def test_admin_api_needs_token(srv):
    async with aiohttp.ClientSession() as s:
        async with s.get(base(srv) + "/admin/") as r:
            assert r.status == 401
            _assert_openai_error(await r.json())
        async with s.get(base(srv) + "/admin/", headers={"authorization": "Bearer key-all-123456"}) as r:
            assert r.status == 401  # a client key is not the admin token
        async with s.get(base(srv) + "/admin/", headers={"authorization": "Bearer admin-secret-1"}) as r:
            assert r.status == 200
            status = await r.json()
        assert status["spec"]["digest"] == srv.state.table.digest
        assert {b["name"]: b["state"] for b in status["backends"]} == {"up": "configured"}
        assert status["auth"] == {"open": False, "keys": 2}
        assert "admin-secret-1" not in str(status) and "key-ci-123456" not in str(status)
