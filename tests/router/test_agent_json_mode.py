"""Agents do not do JSON mode: the agent protocol carries plain text and nothing constrains the
agent's decoding, so a ``response_format: json_object`` request must skip an agent backend
(fall back to one that honours it, or 400 unsupported_request), never get plain text with 200.
"""

from __future__ import annotations

import openai
import pytest

SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
backends:
  laptop: {{kind: agent, url: "{agent}", models: [tiny]}}
  claimed: {{kind: agent, url: "{agent}", models: [claimed], capabilities: [json]}}
  cloud: {{kind: openai-compatible, url: "{up}", models: [tiny]}}
routes:
  - {{name: local-first, match: {{model: tiny}}, to: [laptop, cloud]}}
  - {{name: agents-only, match: {{model: claimed}}, to: [claimed]}}
"""

JSON_MODE = {"response_format": {"type": "json_object"}}
HI = [{"role": "user", "content": "answer in JSON"}]


@pytest.fixture
async def setup(upstreams, router, sdk):
    up = await upstreams(text='{"ok": true}')
    agent = await upstreams("agent")
    srv = await router(SPEC.format(up=up.url, agent=agent.url))
    return up, agent, sdk(srv)


async def test_json_mode_skips_the_agent_and_falls_back(setup):
    up, agent, client = setup
    plain = await client.chat.completions.with_raw_response.create(model="tiny", messages=HI)
    assert plain.headers["x-iir-backend"] == "laptop" and len(agent.requests) == 1
    raw = await client.chat.completions.with_raw_response.create(model="tiny", messages=HI, **JSON_MODE)
    assert raw.headers["x-iir-backend"] == "cloud" and raw.headers["x-iir-attempts"] == "1"
    assert raw.parse().choices[0].message.content == '{"ok": true}'
    assert up.requests[-1]["response_format"] == {"type": "json_object"}
    assert len(agent.requests) == 1  # the JSON-mode request never reached the agent


async def test_json_mode_to_agents_only_is_a_400_even_when_the_spec_claims_json(setup):
    _, agent, client = setup
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="claimed", messages=HI,
                                             response_format={"type": "json_schema", "json_schema": {
                                                 "name": "x", "schema": {"type": "object"}}})
    assert e.value.code == "unsupported_request" and "claimed" in e.value.message and "json" in e.value.message
    assert agent.requests == []
