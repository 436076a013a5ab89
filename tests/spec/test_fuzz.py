"""Fuzz: whatever bytes a spec file holds, loading and checking it either succeeds or raises
ConfigError with one-line, located diagnostics; never another exception (never a traceback)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iir.compile.build import build_text
from iir.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [(ROOT / "iir.yaml").read_text(encoding="utf-8"),
         *(p.read_text(encoding="utf-8") for p in sorted((ROOT / "examples").glob("*.yaml")))]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENV = {"IIR_AGENT_TOKEN": "t" * 16}


def _build(data: bytes | str) -> None:
    try:
        build_text(data, "fuzz.yaml", ENV)
    except ConfigError as e:
        assert e.diagnostics
        for d in e.diagnostics:
            assert d.file == "fuzz.yaml" and d.line >= 1 and d.col >= 1
            assert d.message and "\n" not in d.message and "Traceback" not in d.message


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A shipped spec with a few characters inserted, deleted or replaced, or lines swapped."""
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["insert", "delete", "replace", "swap"]))
        piece = draw(st.sampled_from([":", "-", " ", "\t", "{", "}", "[", "]", "'", '"', "#", "&a", "*a", "${", "\n",
                                      "!!binary", "? ", "|", ">", "%", "@", "\x00", "é", "0x", "1e400", "~"]))
        if op == "insert":
            text = text[:at] + piece + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)):]
        elif op == "replace":
            text = text[:at] + piece + text[at + 1:]
        else:
            lines = text.splitlines(True)
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
    return text


@SETTINGS
@given(mutated())
def test_mutated_specs_never_crash(text: str) -> None:
    _build(text)


@SETTINGS
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    _build(data)


@SETTINGS
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children,
                                                                                     max_size=4), max_leaves=30))
def test_arbitrary_structures_never_crash(tree: object) -> None:
    import json

    _build(json.dumps({"version": 1, "backends": tree, "routes": tree}, allow_nan=True))
