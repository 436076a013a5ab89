"""The libyaml fast path and the round-trip parser must read every spec the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from iir.spec import load
from iir.spec.load import load_text

ROOT = Path(__file__).resolve().parents[2]
SPECS = [ROOT / "iir.yaml", *sorted((ROOT / "examples").glob("*.yaml")),
         *sorted((ROOT / "tests" / "golden" / "valid").glob("*.yaml")),
         *sorted((ROOT / "tests" / "golden" / "warnings").glob("*.yaml"))]
ENV = {"IIR_KEY_CI": "k", "IIR_ADMIN_TOKEN": "a", "IIR_AGENT_TOKEN": "t", "EXTERNAL_OPENAI_KEY": "o"}
TRICKY = """version: 1
server: {listen: "127.0.0.1:8000", drain_timeout: 1e1, max_body: 0x100000}
backends:
  b1:
    kind: agent
    url: http://127.0.0.1:5000
    models: [yes, no, on, "1:30", 0o14, 2001-12-14, ~]
    weight: .5
    headers: {x-a: 1:30, x-b: 'single', x-c: "multi
      line"}
routes:
  - {name: r, to: b1}
"""


def test_the_c_parser_is_installed() -> None:
    assert load.CSafeLoader is not None, "ruamel.yaml.clibz is a dependency: the fast path must be exercised"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_same_spec_either_way(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = path.read_text(encoding="utf-8")
    used: list[bool] = []
    real = load._fast_parse

    def spy(t: str) -> object:
        tree = real(t)
        used.append(tree is not None)
        return tree

    monkeypatch.setattr(load, "_fast_parse", spy)
    fast = load_text(text, path.name, ENV)
    assert used == [True]  # really took the fast path
    monkeypatch.setattr(load, "CSafeLoader", None)
    slow = load_text(text, path.name, ENV)
    assert fast.spec == slow.spec
    assert [str(w) for w in fast.warnings] == [str(w) for w in slow.warnings]


def test_scalar_typing_is_yaml_1_2_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    text = TRICKY.replace("[yes, no, on, \"1:30\", 0o14, 2001-12-14, ~]", "[yes, no, on, \"1:30\"]")
    a = load_text(text, "t.yaml", {})
    monkeypatch.setattr(load, "CSafeLoader", None)
    b = load_text(text, "t.yaml", {})
    assert a.spec == b.spec
    assert a.spec.backends["b1"].models == ["yes", "no", "on", "1:30"]
    assert dict(a.spec.backends["b1"].headers)["x-a"] == "1:30"


def test_lazy_positions_match_eager_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "examples" / "laptop-vllm-openai.yaml").read_text()
    fast = load_text(text, "x.yaml", ENV)
    path = ("routes", 2, "to", 1)
    lazy = fast.source_map.locate(path)
    monkeypatch.setattr(load, "CSafeLoader", None)
    eager = load_text(text, "x.yaml", ENV).source_map.locate(path)
    assert lazy == eager and lazy[0] > 1


def test_same_diagnostics_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    from iir.errors import ConfigError

    with pytest.raises(ConfigError) as fast:
        load_text(TRICKY, "t.yaml", {})
    monkeypatch.setattr(load, "CSafeLoader", None)
    with pytest.raises(ConfigError) as slow:
        load_text(TRICKY, "t.yaml", {})
    assert [str(d) for d in fast.value.diagnostics] == [str(d) for d in slow.value.diagnostics]
    assert any("backends.b1.models[4]" in str(d) for d in fast.value.diagnostics)
