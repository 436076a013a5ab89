"""Route matching (iir.plugins.matching) on compiled tables: first match wins, traces, candidates."""

from __future__ import annotations

import dataclasses

import pytest

from iir.compile.build import build_text
from iir.plugins.matching import (
    RequestFeatures,
    candidates,
    estimate_tokens,
    features_from_body,
    match_route,
)
from iir.table import Backend, RoutingTable

SPEC = """version: 1
auth:
  keys:
    - {name: ci, key: "${CI}"}
    - {name: team, key: "${TEAM}"}
backends:
  laptop: {kind: agent, url: "http://127.0.0.1:5000", models: [tiny-demo], context_window: 512, capabilities: [json]}
  gpu-box: {kind: vllm, url: "http://10.0.0.5:8000/v1", models: [llama-3.1-8b, qwen], context_window: 8192}
  cloud: {kind: openai, models: [gpt-4o-mini], capabilities: [tools, images, json]}
routes:
  - name: vip
    match: {keys: [team], headers: {x-priority: "hi*"}}
    to: [gpu-box]
  - name: french
    match: {model: auto, keywords: [bonjour], regex: "(?i)merci"}
    to: [laptop]
  - name: short
    match: {model: auto, prompt_tokens: {max: 100}, tools: false, images: false}
    to: [laptop, gpu-box]
  - name: vision
    match: {model: auto, images: true}
    to: [cloud, gpu-box]
  - name: semantic
    match: {model: auto, semantic: {examples: [write a poem]}}
    to: [gpu-box]
  - name: long
    match: {model: [auto, "llama-*"]}
    to: [gpu-box, agents, cloud]
  - name: by-model
    match: {model: "*"}
    to: by-model
"""


@pytest.fixture(scope="module")
def table() -> RoutingTable:
    return build_text(SPEC, "m.yaml", {"CI": "c", "TEAM": "t"}).table


def _route(table: RoutingTable, **kw: object) -> str | None:
    route, trace = match_route(table, RequestFeatures(**kw), trace=False)  # type: ignore[arg-type]
    assert trace == ()
    return route.name if route else None


def test_first_match_wins(table: RoutingTable) -> None:
    assert _route(table, model="auto", prompt_tokens=10) == "short"
    assert _route(table, model="auto", prompt_tokens=1000) == "long"
    assert _route(table, model="auto", prompt_tokens=10, has_tools=True) == "long"
    assert _route(table, model="auto", has_images=True) == "vision"
    assert _route(table, model="llama-3.1-8b") == "long"
    assert _route(table, model="qwen") == "by-model"
    assert _route(table, model="anything") == "by-model"


def test_headers_keys_keywords_regex(table: RoutingTable) -> None:
    assert _route(table, model="qwen", key_name="team", headers={"x-priority": "high"}) == "vip"
    assert _route(table, model="qwen", key_name="ci", headers={"x-priority": "high"}) == "by-model"
    assert _route(table, model="qwen", key_name="team", headers={"x-priority": "low"}) == "by-model"
    assert _route(table, model="auto", prompt_tokens=5, last_user_text="Bonjour et MERCI") == "french"
    assert _route(table, model="auto", prompt_tokens=5, last_user_text="bonjour") == "short"


def test_semantic_needs_a_matcher(table: RoutingTable) -> None:
    f = RequestFeatures(model="auto", prompt_tokens=500, last_user_text="a poem please")
    assert match_route(table, f)[0].name == "long"  # type: ignore[union-attr]
    route, _ = match_route(table, f, semantic=lambda r, text: "poem" in text)
    assert route is not None and route.name == "semantic"


def test_trace_explains_every_route(table: RoutingTable) -> None:
    route, trace = match_route(table, RequestFeatures(model="auto", prompt_tokens=1000), trace=True)
    assert route is not None and route.name == "long"
    assert [(v.route, v.matched) for v in trace] == [
        ("vip", False), ("french", False), ("short", False), ("vision", False), ("semantic", False),
        ("long", True), ("by-model", False)]
    reasons = {v.route: v.reason for v in trace}
    assert reasons["vip"] == "client key None is not one of ['team']"
    assert reasons["short"] == "prompt has 1000 tokens, more than max 100"
    assert reasons["vision"] == "needs image input"
    assert reasons["semantic"] == "semantic condition, but no semantic matcher is available"
    assert reasons["by-model"] == "not reached: 'long' matched first"


def test_candidates_keep_and_drop_with_reasons(table: RoutingTable) -> None:
    f = RequestFeatures(model="auto", prompt_tokens=1000, has_tools=True)
    route, _ = match_route(table, f)
    assert route is not None and route.name == "long"
    agent = Backend(name="agents/mac-1", kind="agent", protocol="agent", base_url="http://127.0.0.1:5001",
                    models=("tiny-demo",), context_window=4096, dynamic=True)
    got = [(c.name, c.kept, c.reason) for c in candidates(table, route, f, agents=(agent,))]
    assert got == [
        ("gpu-box", True, "sends model 'llama-3.1-8b'"),
        ("agents/mac-1", True, "sends model 'tiny-demo'"),
        ("cloud", False, "not configured: no API key: set EXTERNAL_OPENAI_KEY or `api_key`"),
    ]
    short = [(c.name, c.kept) for c in candidates(table, table.routes[2], dataclasses.replace(f, prompt_tokens=600, has_tools=False))]
    assert short == [("laptop", False), ("gpu-box", True)]
    no_agents = candidates(table, route, dataclasses.replace(f, has_tools=False))
    assert [(c.name, c.kept, c.reason) for c in no_agents][1] == ("agents", False, "no live registered agent")


def test_by_model_candidates(table: RoutingTable) -> None:
    by_model = table.routes[-1]
    got = candidates(table, by_model, RequestFeatures(model="qwen"))
    assert [(c.name, c.kept) for c in got] == [("gpu-box", True)]
    missing = candidates(table, by_model, RequestFeatures(model="nope"))
    assert [(c.kept, c.reason) for c in missing] == [(False, "no backend declares model 'nope'")]


def test_features_from_openai_body() -> None:
    body = {"model": "auto", "tools": [{"type": "function"}], "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:,"}}]}]}
    f = features_from_body(body, headers={"x-a": "1"}, key_name="ci", count_tokens=len)
    assert (f.model, f.has_tools, f.has_images, f.last_user_text, f.key_name) == ("auto", True, True, "what is this?", "ci")
    assert f.prompt_tokens == len("be brief\nwhat is this?")
    legacy = features_from_body({"model": "m", "prompt": "hello"})
    assert (legacy.last_user_text, legacy.has_tools) == ("hello", False)
    assert features_from_body({"messages": "junk"}).model == ""


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("hello world") == 3
    assert estimate_tokens("a b c d e f") == 6
