"""Liveness, readiness, and unconfigured backends reported and skipped (not fatal)."""

from __future__ import annotations

import logging

import aiohttp

from tests.router.conftest import base

SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
backends:
  laptop: {{kind: agent, url: "{agent}", models: [tiny]}}
  openai: {{kind: openai, models: [gpt-4o-mini]}}
routes:
  - name: by-model
    match: {{model: "*"}}
    to: by-model
"""
CLOUD_ONLY = """
version: 1
state: {registry: "{registry}"}
backends:
  openai: {kind: openai, models: [gpt-4o-mini]}
routes:
  - name: all
    to: [openai]
"""


async def test_unconfigured_backend_is_reported_and_skipped(upstreams, router, caplog):
    caplog.set_level(logging.INFO)
    agent = await upstreams("agent")
    srv = await router(SPEC.format(agent=agent.url), env={})  # no EXTERNAL_OPENAI_KEY
    assert any("unconfigured" in r.getMessage() and "EXTERNAL_OPENAI_KEY" in r.getMessage() for r in caplog.records)
    async with aiohttp.ClientSession() as s:
        async with s.get(base(srv) + "/healthz") as r:
            assert r.status == 200
        async with s.get(base(srv) + "/readyz") as r:
            assert r.status == 200 and (await r.json())["routable_backends"] == ["laptop"]
        async with s.get(base(srv) + "/admin/") as r:
            states = {b["name"]: (b["state"], b["reason"]) for b in (await r.json())["backends"]}
        assert states["laptop"] == ("configured", None)
        assert states["openai"][0] == "unconfigured" and "EXTERNAL_OPENAI_KEY" in states["openai"][1]
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(base(srv) + "/v1/chat/completions", json=chat) as r:
            body = await r.json()
            assert r.status == 503 and body["error"]["code"] == "no_backend_available"
            assert "EXTERNAL_OPENAI_KEY" in body["error"]["message"]
        async with s.post(base(srv) + "/v1/chat/completions", json={**chat, "model": "tiny"}) as r:
            assert r.status == 200


async def test_not_ready_without_any_routable_backend(router):
    srv = await router(CLOUD_ONLY, env={})
    async with aiohttp.ClientSession() as s:
        async with s.get(base(srv) + "/healthz") as r:
            assert r.status == 200
        async with s.get(base(srv) + "/readyz") as r:
            assert r.status == 503 and (await r.json())["status"] == "not ready"


async def test_cloud_backend_configured_from_environment(upstreams, router):
    up = await upstreams()
    srv = await router(CLOUD_ONLY, env={"EXTERNAL_OPENAI_KEY": "sk-test-abcdef", "OPENAI_BASE_URL": up.url})
    async with aiohttp.ClientSession() as s:
        async with s.get(base(srv) + "/readyz") as r:
            assert r.status == 200
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(base(srv) + "/v1/chat/completions", json=chat) as r:
            assert r.status == 200 and (await r.json())["model"] == "gpt-4o-mini"
    assert up.request_headers[-1]["authorization"] == "Bearer sk-test-abcdef"
