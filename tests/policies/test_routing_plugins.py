"""Smart routing at plugin level: content rules with the shared token counter, filters,
strategies (least-loaded, affinity, cheapest, lowest-latency, weighted) and the circuit breaker."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from iir.compile.build import build_table
from iir.plugins.matching import RequestFeatures, match_route
from iir.plugins.selection import SelectionRequest, explain_header, rendezvous_order, select
from iir.policies.health import CircuitSettings, HealthBoard
from iir.policies.tokens import TokenCounter, estimate_tokens

SPEC = """
version: 1
backends:
  laptop:  {kind: agent, url: "http://127.0.0.1:5000", models: [local-small], context_window: 2048}
  laptop2: {kind: agent, url: "http://127.0.0.1:5001", models: [local-small], context_window: 2048}
  cluster: {kind: llm-d, url: "http://127.0.0.1:5002/v1", models: [llama-70b], context_window: 32768}
  openai:  {kind: openai-compatible, url: "http://127.0.0.1:5003/v1", models: [gpt-4o-mini],
            price: {gpt-4o-mini: {input: 0.15, output: 0.60}}}
  pricey:  {kind: openai-compatible, url: "http://127.0.0.1:5004/v1", models: [gpt-4o],
            price: {gpt-4o: {input: 2.5, output: 10}}}
routes:
  - name: light-on-device
    match: {model: auto, prompt_tokens: {max: 512}, tools: false}
    to: [laptop, laptop2]
    strategy: least-loaded
  - name: heavy
    match: {model: auto}
    to: [cluster, openai]
  - name: sticky
    match: {model: sticky}
    to: [laptop, laptop2, cluster]
    strategy: affinity
  - name: cheap
    match: {model: cheap}
    to: [pricey, openai, cluster]
    strategy: cheapest
"""


@pytest.fixture
def table(write_spec):
    return build_table(write_spec(SPEC), {}).table


def route_for(table, body, counter):
    feats = RequestFeatures(model=body["model"], prompt_tokens=counter.count_request(body, "chat"),
                            has_tools=bool(body.get("tools")))
    route, _ = match_route(table, feats)
    return route, feats


def backends(table, route):
    return [table.backends[n] for n in route.targets]


def test_auto_light_goes_to_agent_heavy_or_tools_to_cluster(table):
    counter = TokenCounter()
    short = {"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France? Be brief."}]}
    route, feats = route_for(table, short, counter)
    assert 10 <= feats.prompt_tokens <= 30
    assert route.name == "light-on-device"
    assert select(backends(table, route), SelectionRequest("auto", feats.prompt_tokens), route.strategy).kept[0].backend.name == "laptop"

    long_text = " ".join(f"word{i} and some more context" for i in range(600))
    long = {"model": "auto", "messages": [{"role": "user", "content": long_text}]}
    route, feats = route_for(table, long, counter)
    assert feats.prompt_tokens >= 3000
    assert route.name == "heavy"
    assert select(backends(table, route), SelectionRequest("auto", feats.prompt_tokens), route.strategy).kept[0].backend.name == "cluster"

    tools = {**short, "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]}
    route, _ = route_for(table, tools, counter)
    assert route.name == "heavy"


def test_context_window_and_capability_filters(table):
    route = next(r for r in table.routes if r.name == "heavy")
    sel = select(backends(table, route), SelectionRequest("auto", prompt_tokens=30000, max_tokens=4000), "priority")
    assert [c.backend.name for c in sel.kept] == ["openai"]
    dropped = next(c for c in sel.candidates if c.backend.name == "cluster")
    assert not dropped.kept and dropped.reason.startswith("context-window")
    sel = select(backends(table, route), SelectionRequest("auto", needs=frozenset({"images"})), "priority")
    assert not sel.kept and all("capability" in c.reason for c in sel.candidates)


def test_explain_header_names_the_filter_or_the_pre_drop_without_its_detail(table):
    route = table.routes[0]
    names = [b.name for b in backends(table, route)]
    sel = select(backends(table, route), SelectionRequest("auto", 20), "priority",
                 dropped={names[0]: "unconfigured (no API key: EXTERNAL_OPENAI_KEY is not set)"})
    header = explain_header(route.name, sel)
    assert header.startswith(f"{route.name}; priority; ")
    assert header.endswith(f"{names[0]}!unconfigured (no API key)")  # not cut mid-bracket at the detail's ':'
    sel = select(backends(table, route), SelectionRequest("auto", needs=frozenset({"images"})), "priority")
    assert all(f"{n}!capability" in explain_header(route.name, sel) for n in names)


def test_least_loaded_prefers_shorter_queue(table):
    route = table.routes[0]
    health = HealthBoard()
    health.report_queue("laptop", 5)   # agent heartbeat: 5 queued
    health.report_queue("laptop2", 1)
    sel = select(backends(table, route), SelectionRequest("auto", 20), "least-loaded", health)
    assert [c.backend.name for c in sel.kept] == ["laptop2", "laptop"]
    for _ in range(6):
        health.started("laptop2")      # in-flight here counts too
    sel = select(backends(table, route), SelectionRequest("auto", 20), "least-loaded", health)
    assert sel.kept[0].backend.name == "laptop"
    assert "laptop=" in explain_header(route.name, sel)
    # a live source (the agent directory's heartbeats) overrides pushed reports
    queues = {"laptop": 10.0, "laptop2": 0.0}
    health.queue_source = queues.get
    sel = select(backends(table, route), SelectionRequest("auto", 20), "least-loaded", health)
    assert sel.kept[0].backend.name == "laptop2"


def test_circuit_breaker_skips_during_cooldown_then_retries(table):
    now = [1000.0]
    health = HealthBoard(CircuitSettings(failures=5, cooldown=30), clock=lambda: now[0])
    route = next(r for r in table.routes if r.name == "heavy")
    for i in range(5):
        health.started("cluster")
        health.finished("cluster", ok=False)
        if i < 4:
            assert health.available("cluster")[0]
    sel = select(backends(table, route), SelectionRequest("auto", 20), "priority", health)
    assert [c.backend.name for c in sel.kept] == ["openai"]
    skipped = next(c for c in sel.candidates if c.backend.name == "cluster")
    assert "circuit open" in skipped.reason
    now[0] += 31  # cooldown over: one probe is let through
    sel = select(backends(table, route), SelectionRequest("auto", 20), "priority", health)
    assert sel.kept[0].backend.name == "cluster"
    health.started("cluster")
    assert not health.available("cluster")[0]  # only one probe at a time
    health.finished("cluster", ok=True, ttft=0.05, seconds=0.2)
    assert health.available("cluster") == (True, "")
    # a failed probe reopens the circuit at once
    for _ in range(5):
        health.started("cluster")
        health.finished("cluster", ok=False)
    now[0] += 31
    health.started("cluster")
    health.finished("cluster", ok=False)
    assert not health.available("cluster")[0]


def test_affinity_stable_per_session_while_healthy(table):
    route = next(r for r in table.routes if r.name == "sticky")
    health = HealthBoard()
    picks = {}
    for session in (f"s{i}" for i in range(30)):
        first = {select(backends(table, route), SelectionRequest("sticky", 10, affinity_key=session),
                        "affinity", health).kept[0].backend.name for _ in range(5)}
        assert len(first) == 1
        picks[session] = first.pop()
    assert len(set(picks.values())) >= 2  # sessions spread over backends
    # one backend fails: only its sessions move; the others stay put
    victim = picks["s0"]
    for _ in range(5):
        health.started(victim)
        health.finished(victim, ok=False)
    for session, before in picks.items():
        now = select(backends(table, route), SelectionRequest("sticky", 10, affinity_key=session),
                     "affinity", health).kept[0].backend.name
        assert now != victim
        if before != victim:
            assert now == before
    assert rendezvous_order(["a", "b", "c"], "k") == rendezvous_order(["a", "b", "c"], "k")


def test_cheapest_lowest_latency_weighted(table):
    route = next(r for r in table.routes if r.name == "cheap")
    sel = select(backends(table, route), SelectionRequest("cheap"), "cheapest")
    assert [c.backend.name for c in sel.kept] == ["cluster", "openai", "pricey"]
    health = HealthBoard()
    for name, ttft in (("pricey", 0.9), ("openai", 0.2), ("cluster", 0.5)):
        health.started(name)
        health.finished(name, ok=True, ttft=ttft, seconds=1.0)
    sel = select(backends(table, route), SelectionRequest("cheap"), "lowest-latency", health)
    assert [c.backend.name for c in sel.kept] == ["openai", "cluster", "pricey"]
    heavy = replace(table.backends["openai"], weight=9.0)
    light = table.backends["cluster"]
    rng = random.Random(7)
    firsts = [select([light, heavy], SelectionRequest("x"), "weighted", rng=rng).kept[0].backend.name
              for _ in range(400)]
    share = firsts.count("openai") / len(firsts)
    assert 0.8 < share < 0.97


def test_unknown_strategy_is_an_error(table):
    with pytest.raises(KeyError):
        select([], SelectionRequest("x"), "fastest-ever")


def test_token_counter_tiktoken_and_estimator():
    c = TokenCounter()
    assert c.method == "estimate"  # nothing loaded until an OpenAI-family model is counted
    c.count_text("warm", "llama-3.1-8b")
    assert c.method == "estimate"
    assert c.load() == "tiktoken:cl100k_base"
    assert c.count_text("hello world", "gpt-4o-mini") == 2
    samples = [
        "The quick brown fox jumps over the lazy dog. " * 20,
        "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n" * 10,
        '{"name": "router", "replicas": 3, "labels": {"app": "iir"}}' * 10,
        "Rate limits are enforced per key, per model and per route, counted in Redis. " * 15,
        "Die Katze sitzt auf der Matte und schaut aus dem Fenster. " * 10,
        "Привет, как дела? Всё хорошо. " * 5,
        "日本語のテキストです。東京は大きい都市です。" * 5,
        "snake_case_names = some_func(arg_one)\n" * 10,
        "1234567 89012 3.14159 2026-11-27 " * 10,
        "Hi! Can you help me write an email to my landlord about the broken heating? Thanks.",
        Path(__file__).read_text()[:3000],
    ]
    for text in samples:
        exact = c.count_text(text, "gpt-4")
        est = c.count_text(text, "llama-3.1-8b")
        assert est == estimate_tokens(text)  # other models: the calibrated estimator
        assert abs(est - exact) / exact <= 0.25, (text[:30], est, exact)
    body = {"model": "gpt-4", "messages": [{"role": "system", "content": "You are helpful."},
                                            {"role": "user", "content": "Hi"}]}
    assert c.count_request(body, "chat") == 3 + 3 + 4 + 3 + 1  # overhead + system(4) + user(1)
    assert TokenCounter.completion_budget({"max_tokens": 50}) == 50
    fallback = TokenCounter(use_tiktoken=False)
    assert fallback.load() == "estimate"
    assert fallback.count_text("hello world, how are you?") == estimate_tokens("hello world, how are you?")
    assert TokenCounter.exact_for("gpt-4o-mini") and not TokenCounter.exact_for("llama-3.1-8b")
