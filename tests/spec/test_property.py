"""Property tests: compile is deterministic, and the digest changes iff the meaning changes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iir.compile.build import build_text
from iir.compile.compiler import table_to_dict

NAMES = ["laptop", "gpu-box", "cluster", "spare", "edge-1"]
MODELS = ["tiny-demo", "llama-3.1-8b", "qwen-2.5", "mistral-7b", "phi-3"]
KINDS = ["agent", "vllm", "openai-compatible", "llm-d"]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    backends = {}
    for i, name in enumerate(names):
        b: dict[str, Any] = {
            "kind": draw(st.sampled_from(KINDS)),
            "url": f"http://10.0.0.{i + 1}:{draw(st.integers(1024, 65535))}/v1",
            "models": draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True)),
        }
        if draw(st.booleans()):
            b["context_window"] = draw(st.sampled_from([512, 2048, 8192, 32768]))
        if draw(st.booleans()):
            b["weight"] = draw(st.sampled_from([0.5, 1.0, 3.0]))
        backends[name] = b
    routes = []
    for j in range(draw(st.integers(1, 3))):
        route: dict[str, Any] = {"name": f"r{j}"}
        match: dict[str, Any] = {}
        model = draw(st.sampled_from([None, "auto", "*", "llama-*", MODELS[0]]))
        if model:
            match["model"] = model
        if draw(st.booleans()):
            match["prompt_tokens"] = {"max": draw(st.integers(1, 5000))}
        if draw(st.booleans()):
            match["tools"] = draw(st.booleans())
        if match:
            route["match"] = match
        route["to"] = "by-model" if draw(st.booleans()) else draw(
            st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
        route["strategy"] = draw(st.sampled_from(["priority", "least-loaded", "weighted"]))
        routes.append(route)
    return {"version": 1, "backends": backends, "routes": routes}


def _block_yaml(value: Any, indent: int = 0, comments: bool = False) -> str:
    """A hand-rolled block-style YAML writer (with optional comments) for reformatting."""
    pad = " " * indent
    out = ""
    if isinstance(value, dict):
        for k, v in value.items():
            note = "  # a comment" if comments else ""
            if isinstance(v, dict | list) and v:
                out += f"{pad}{k}:{note}\n" + _block_yaml(v, indent + 2, comments)
            else:
                out += f"{pad}{k}: {json.dumps(v)}{note}\n"
    else:
        for item in value:
            if isinstance(item, dict):
                inner = _block_yaml(item, indent + 2, comments)
                out += f"{pad}- {inner.lstrip()}"
            else:
                out += f"{pad}- {json.dumps(item)}\n"
    return out


def _reorder(value: Any) -> Any:
    """Reverse key order inside every mapping where order carries no meaning (not backends)."""
    if isinstance(value, dict):
        items = [(k, _reorder(v) if k != "backends" else {n: _reorder(b) for n, b in v.items()})
                 for k, v in value.items()]
        return dict(reversed(items))
    if isinstance(value, list):
        return [_reorder(v) for v in value]
    return value


def _build(text: str) -> Any:
    return build_text(text, "prop.yaml", {}).table


@SETTINGS
@given(specs())
def test_compile_is_deterministic(spec: dict[str, Any]) -> None:
    text = json.dumps(spec)
    a, b = _build(text), _build(text)
    assert a.digest == b.digest and a == b and hash(a) == hash(b)
    assert table_to_dict(a) == table_to_dict(b)


@SETTINGS
@given(specs())
def test_formatting_comments_and_key_order_do_not_change_the_digest(spec: dict[str, Any]) -> None:
    digest = _build(json.dumps(spec)).digest
    assert _build(_block_yaml(spec)).digest == digest
    assert _build("# header comment\n" + _block_yaml(spec, comments=True)).digest == digest
    assert _build(json.dumps(_reorder(spec), indent=4)).digest == digest


@SETTINGS
@given(specs(), st.data())
def test_meaningful_changes_change_the_digest(spec: dict[str, Any], data: st.DataObject) -> None:
    digest = _build(json.dumps(spec)).digest
    name = data.draw(st.sampled_from(sorted(spec["backends"])))
    backend = spec["backends"][name]

    renamed = json.loads(json.dumps(spec))
    renamed["backends"][name]["models"][0] = "brand-new-model"
    assert _build(json.dumps(renamed)).digest != digest

    moved = json.loads(json.dumps(spec))
    moved["backends"][name]["url"] = backend["url"].replace("/v1", "/v2")
    assert _build(json.dumps(moved)).digest != digest

    route_changed = json.loads(json.dumps(spec))
    route_changed["routes"][0]["name"] = "renamed-route"
    assert _build(json.dumps(route_changed)).digest != digest


def test_rotating_a_secret_changes_the_digest_without_storing_it() -> None:
    base = ('{"version": 1, "auth": {"keys": [{"name": "ci", "key": "${K}"}]}, "backends": {"a": {"kind": "agent", '
            '"url": "http://127.0.0.1:5000", "models": ["m"]}}, "routes": [{"name": "r", "to": "a"}]}')
    one = build_text(base, "s.yaml", {"K": "secret-one"}).table
    two = build_text(base, "s.yaml", {"K": "secret-two"}).table
    assert one.digest != two.digest
    dumped = json.dumps(table_to_dict(one, secrets="hash")) + json.dumps(table_to_dict(one))
    assert "secret-one" not in dumped
