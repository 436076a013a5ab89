"""Loader edge cases not covered by the golden files: huge files, odd paths, expansion, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from iir.errors import ConfigError
from iir.spec.diagnose import did_you_mean
from iir.spec.load import MAX_SPEC_BYTES, load_spec, load_text

MINIMAL = """version: 1
backends:
  laptop: {kind: agent, url: "http://127.0.0.1:5000", models: [tiny-demo]}
routes:
  - {name: all, to: [laptop]}
"""


def _one(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    diags = excinfo.value.diagnostics
    assert len(diags) == 1
    return str(diags[0])


def test_50_megabyte_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB of zero bytes
    with pytest.raises(ConfigError) as e:
        load_spec(big, {})
    assert _one(e) == f"{big}:1:1 file is 52428800 bytes; a spec may be at most {MAX_SPEC_BYTES} bytes"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_spec(tmp_path / "nope.yaml", {})
    assert _one(e).endswith("nope.yaml:1:1 cannot read spec: No such file or directory")
    with pytest.raises(ConfigError) as e:
        load_spec(tmp_path, {})
    assert _one(e).endswith(":1:1 is a directory, not a spec file")


def test_oversized_text_in_memory() -> None:
    with pytest.raises(ConfigError) as e:
        load_text(b"#" * (MAX_SPEC_BYTES + 1), "mem.yaml", {})
    assert "larger than" in _one(e)


def test_bom_is_accepted() -> None:
    assert load_text(b"\xef\xbb\xbf" + MINIMAL.encode(), "bom.yaml", {}).spec.version == 1


def test_env_expansion_defaults_and_overrides() -> None:
    text = MINIMAL.replace('"http://127.0.0.1:5000"', '"http://${HOST:-127.0.0.1}:${PORT}"')
    loaded = load_text(text, "x.yaml", {"PORT": "5001"})
    assert loaded.spec.backends["laptop"].url == "http://127.0.0.1:5001"
    loaded = load_text(text, "x.yaml", {"PORT": "5001", "HOST": "10.0.0.1"})
    assert loaded.spec.backends["laptop"].url == "http://10.0.0.1:5001"
    # An empty variable counts as unset: the default applies, or it is an error.
    with pytest.raises(ConfigError) as e:
        load_text(text, "x.yaml", {"PORT": ""})
    assert _one(e) == ("x.yaml:3:57 backends.laptop.url: environment variable PORT is not set "
                       "(write ${PORT:-default} to make it optional)")


def test_malformed_reference_is_an_error() -> None:
    with pytest.raises(ConfigError) as e:
        load_text(MINIMAL.replace("http://127.0.0.1:5000", "http://${not valid}"), "x.yaml", {})
    assert "malformed ${...}" in _one(e)


def test_empty_optional_key_disables_the_client_key() -> None:
    text = MINIMAL + "auth:\n  keys:\n    - {name: ci, key: \"${CI_KEY:-}\"}\n"
    loaded = load_text(text, "x.yaml", {})
    assert loaded.spec.auth.keys[0].key is None
    assert not loaded.warnings


def test_secret_values_never_appear_in_reprs() -> None:
    text = MINIMAL + "auth:\n  admin_token: \"${TOK}\"\n"
    loaded = load_text(text, "x.yaml", {"TOK": "super-secret-admin"})
    assert "super-secret-admin" not in repr(loaded.spec)
    assert "super-secret-admin" not in loaded.spec.model_dump_json()


def test_literal_secret_is_a_warning_not_an_error() -> None:
    loaded = load_text(MINIMAL + "agents: {token: plain-text}\n", "x.yaml", {})
    assert [str(w) for w in loaded.warnings] == [
        "x.yaml:6:17 agents.token: warning: a secret is written literally in the file; write it as ${VAR} "
        "so it comes from the environment"]


def test_non_string_keys_and_deep_nesting_do_not_crash() -> None:
    with pytest.raises(ConfigError) as e:
        load_text(MINIMAL + "1: x\n", "x.yaml", {})
    assert "unknown field '1'" in _one(e)
    deep = "version: 1\nx: " + "[" * 100 + "]" * 100 + "\n"
    with pytest.raises(ConfigError) as e:
        load_text(deep, "deep.yaml", {})
    assert any("nested more than 64 levels" in d.message for d in e.value.diagnostics)


def test_all_diagnostics_come_at_once_sorted() -> None:
    text = """version: 1
server: {workers: 0}
backends:
  laptop: {kind: agent, url: "http://127.0.0.1:5000", models: [tiny-demo], weight: -1}
routes:
  - {name: all, to: [laptop], strategy: random}
"""
    with pytest.raises(ConfigError) as e:
        load_text(text, "x.yaml", {})
    positions = [(d.line, d.col) for d in e.value.diagnostics]
    assert len(positions) == 3 and positions == sorted(positions)


def test_did_you_mean() -> None:
    assert did_you_mean("urll", ["url", "models"]) == " (did you mean 'url'?)"
    assert did_you_mean("zzz", ["url", "models"]) == ""


def test_agent_backend_declaring_tools_or_images_is_warned() -> None:
    """The agent protocol carries text only: compile drops tools/images/json from an agent backend,
    and validate says so where the user wrote them."""
    from iir.compile.build import build_text

    text = ("version: 1\nbackends:\n"
            "  laptop: {kind: agent, url: 'http://127.0.0.1:5000', models: [m], capabilities: [tools, json]}\n"
            "  plain: {kind: agent, url: 'http://127.0.0.1:5001', models: [m]}\n"
            "routes:\n  - {name: r, match: {model: '*'}, to: by-model}\n")
    built = build_text(text, "x.yaml", {})
    warned = [str(w) for w in built.warnings if "capabilities" in w.path]
    assert warned == ["x.yaml:3:82 backends.laptop.capabilities: warning: an agent backend cannot take tools or JSON mode (the "
                      "agent protocol carries text only): requests needing it skip 'laptop'"]
    assert built.table.backends["laptop"].capabilities == frozenset()
