"""Offline tools on a machine without the production secrets.

A spec that needs ``${VAR}`` without a default (DESIGN.md's sample: ``api_key: ${EXTERNAL_OPENAI_KEY}``,
``url: ${LLMD_ENDPOINT}``) must still be listable, editable, explainable and exportable where those
variables are not set; ``serve``/``compile``/``validate`` stay strict (``validate --allow-missing-env``
relaxes it for CI). A placeholder never reaches a written file or an export.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from iir.cli import _register, cli
from iir.compile.build import build_table
from iir.errors import ConfigError
from iir.spec.load import PLACEHOLDER_PREFIX

VARS = ("EXTERNAL_OPENAI_KEY", "LLMD_ENDPOINT", "IIR_KEY_CI", "VLLM_HOST", "IIR_AGENT_TOKEN")

SPEC = """\
# production spec: secrets come from the deploy machine
version: 1
auth:
  keys:
    - {name: ci, key: "${IIR_KEY_CI}", models: ["*"]}   # CI's key
backends:
  openai: {kind: openai, api_key: "${EXTERNAL_OPENAI_KEY}", models: [gpt-4o-mini]}
  cluster: {kind: llm-d, url: "${LLMD_ENDPOINT}", models: [llama-3.1-70b, llama-3.1-8b]}
  gpu:   # the vLLM box
    kind: vllm
    url: "http://${VLLM_HOST}:8000/v1"
    models: [qwen]
routes:
  - {name: all, match: {model: "*"}, to: by-model}
"""


@pytest.fixture(scope="module", autouse=True)
def _commands() -> None:
    _register()


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "iir.yaml"
    path.write_text(SPEC)
    return path


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _warned_once(stderr: str) -> None:
    for var in ("EXTERNAL_OPENAI_KEY", "LLMD_ENDPOINT", "IIR_KEY_CI", "VLLM_HOST"):
        assert stderr.count(f"{var} is not set; ") == 1, (var, stderr)
    assert "Traceback" not in stderr
    assert "EXTERNAL_OPENAI_KEY is not set; left empty (a secret)" in stderr
    assert f"LLMD_ENDPOINT is not set; using the placeholder 'http://{PLACEHOLDER_PREFIX}LLMD_ENDPOINT.invalid'" in stderr


def test_serve_pipeline_stays_strict(spec: Path) -> None:
    with pytest.raises(ConfigError) as e:
        build_table(spec, {})
    assert [d.message for d in e.value.diagnostics if "is not set" in d.message] == [
        f"environment variable {v} is not set (write ${{{v}:-default}} to make it optional)"
        for v in ("IIR_KEY_CI", "EXTERNAL_OPENAI_KEY", "LLMD_ENDPOINT", "VLLM_HOST")]


def test_lenient_secrets_are_empty_and_backends_unconfigured(spec: Path) -> None:
    built = build_table(spec, {}, "lenient")
    b = built.table.backends
    assert b["openai"].api_key is None  # never a fake, real-looking secret
    assert not b["openai"].configured and b["openai"].unconfigured_reason == "EXTERNAL_OPENAI_KEY is not set"
    assert not b["cluster"].configured and b["cluster"].unconfigured_reason == "LLMD_ENDPOINT is not set"
    assert not b["gpu"].configured and b["gpu"].base_url == f"http://{PLACEHOLDER_PREFIX}VLLM_HOST.invalid:8000/v1"
    assert built.table.auth.keys_by_sha256 == {}  # the client key's value is unset, not a placeholder
    # the check's own "has no API key" warning is not repeated for a backend already warned about
    assert not [d for d in built.warnings if "has no API key" in d.message]
    # with the variables set, the lenient load is the strict one
    env = {"EXTERNAL_OPENAI_KEY": "sk-x", "LLMD_ENDPOINT": "http://l/v1", "IIR_KEY_CI": "k", "VLLM_HOST": "h"}
    assert build_table(spec, env, "lenient").table.digest == build_table(spec, env).table.digest


def test_a_placeholder_that_does_not_fit_reports_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text('version: 1\nserver: {workers: "${NOPE_WORKERS}"}\nbackends:\n'
                    '  a: {kind: vllm, url: "http://h/v1", models: [m]}\nroutes:\n  - {name: r, match: {model: "*"}, to: by-model}\n')
    with pytest.raises(ConfigError) as e:
        build_table(path, {}, "lenient")
    assert [str(d) for d in e.value.diagnostics] == [
        f"{path}:2:20 server.workers: environment variable NOPE_WORKERS is not set "
        "(write ${NOPE_WORKERS:-default} to make it optional)"]  # the variable, not the placeholder's type error


def test_models_list(spec: Path) -> None:
    result = run("models", "list", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"gpt-4o-mini", "llama-3.1-70b", "llama-3.1-8b", "qwen"}
    assert not any(r["configured"] for r in rows.values())
    _warned_once(result.stderr)


@pytest.mark.parametrize("args", [
    ("add", "gpt-4o", "--backend", "openai"),
    ("update", "qwen", "--upstream", "Qwen/Qwen2.5-7B"),
    ("remove", "llama-3.1-70b"),
], ids=["add", "update", "remove"])
def test_models_edit_keeps_the_variable_references(spec: Path, args: tuple[str, ...]) -> None:
    result = run("models", *args)
    assert result.exit_code == 0, result.output
    _warned_once(result.stderr)
    text = spec.read_text()
    assert PLACEHOLDER_PREFIX not in text
    changed = [line for line in SPEC.splitlines() if line not in text.splitlines()]
    for var in ("${IIR_KEY_CI}", "${EXTERNAL_OPENAI_KEY}", "${VLLM_HOST}"):
        assert var in text
    # only the edited backend's line(s) differ; every comment and other line is byte-identical
    assert all(("openai" in line) or ("llama" in line) or ("qwen" in line) for line in changed), changed
    assert "# production spec: secrets come from the deploy machine" in text and "# the vLLM box" in text


def test_explain_drops_backends_whose_variable_is_unset(spec: Path) -> None:
    result = run("explain", "-m", "gpt-4o-mini", "--key", "ci", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [(c["backend"], c["kept"]) for c in out["candidates"]] == [("openai", False)]
    assert "EXTERNAL_OPENAI_KEY is not set" in out["candidates"][0]["reason"]
    assert out["status"] == 503  # as the router would answer without the key
    _warned_once(result.stderr)


def test_validate_strict_by_default_and_allow_missing_env(spec: Path) -> None:
    strict = run("validate")
    assert strict.exit_code == 1
    assert "environment variable EXTERNAL_OPENAI_KEY is not set" in strict.stderr
    lenient = run("validate", "--allow-missing-env", "--format", "json")
    assert lenient.exit_code == 0, lenient.output
    report = json.loads(lenient.stdout)
    assert report["ok"] and report["errors"] == 0
    msgs = [d["message"] for d in report["files"][0]["diagnostics"]]
    assert "EXTERNAL_OPENAI_KEY is not set; left empty (a secret)" in msgs
    # other errors are still errors
    (spec.parent / "bad.yaml").write_text(SPEC.replace("to: by-model", "to: [nope]"))
    assert run("validate", "--allow-missing-env", "bad.yaml").exit_code == 1


def test_export_compose_env_and_helm_values_keep_references(spec: Path) -> None:
    env = run("export", "compose-env")
    assert env.exit_code == 0, env.output
    _warned_once(env.stderr)
    lines = env.stdout.splitlines()
    for var in ("EXTERNAL_OPENAI_KEY", "IIR_KEY_CI", "LLMD_ENDPOINT", "VLLM_HOST"):
        assert f"{var}=" in lines, var  # left empty to fill in, never a placeholder
    assert PLACEHOLDER_PREFIX not in env.stdout.lower()
    values = run("export", "helm-values")
    assert values.exit_code == 0, values.output
    assert "${EXTERNAL_OPENAI_KEY}" in values.stdout and "${VLLM_HOST}" in values.stdout  # the spec text as written
    assert PLACEHOLDER_PREFIX not in values.stdout.lower()


def test_export_refuses_an_output_that_needs_an_unset_value(spec: Path) -> None:
    inv = run("export", "inventory")  # lists the llm-d cluster by its URL: LLMD_ENDPOINT is needed
    assert inv.exit_code == 1
    assert "cannot export: the output needs the value of LLMD_ENDPOINT, which is not set" in inv.stderr
    assert PLACEHOLDER_PREFIX not in inv.stdout.lower()
    assert not (spec.parent / "inv.yaml").exists()
    assert run("export", "inventory", "-o", "inv.yaml").exit_code == 1
    assert not (spec.parent / "inv.yaml").exists()
