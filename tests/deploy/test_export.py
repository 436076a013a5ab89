"""`iir export` against golden files, plus the properties the deployment tools rely on.

Regenerate the golden files after an intended change with
    IIR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/deploy/test_export.py
and review the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from iir.compile.build import build_table
from iir.export import compose_env, helm_values, inventory, inventory_host, inventory_list
from iir.export.data import env_refs

from .conftest import EXPORT_ENV, ROOT, example_specs

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("IIR_UPDATE_GOLDEN") == "1"
SPECS = example_specs()


def _exports(spec: Path) -> dict[str, str]:
    rel = spec.relative_to(ROOT)
    cwd = Path.cwd()
    os.chdir(ROOT)  # the exports name the spec by the path they were given
    try:
        built = build_table(str(rel), EXPORT_ENV)
    finally:
        os.chdir(cwd)
    digest = built.table.digest
    out = {
        "inventory.yml": inventory(built, EXPORT_ENV),
        "inventory.json": inventory_list(built, EXPORT_ENV),
        "values.iir-router.yaml": helm_values(built, "iir-router"),
        "compose.env": compose_env(built),
    }
    if any(b.kind == "llm-d" for b in built.table.backends.values()):
        out["values.llm-d.yaml"] = helm_values(built, "llm-d")
    assert digest in out["inventory.yml"] and digest[:12] in out["compose.env"]
    # The compiled table's digest changes with any compiler change, not only with the spec:
    # the golden files hold a placeholder so they pin what the exporter writes, not the compiler.
    return {name: text.replace(digest, "<digest>").replace(digest[:12], "<digest12>") for name, text in out.items()}


def test_specs_are_found() -> None:
    assert ROOT / "iir.yaml" in SPECS
    assert ROOT / "docker" / "iir.compose.yaml" in SPECS


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_export_matches_golden(spec: Path) -> None:
    folder = GOLDEN / spec.stem
    produced = _exports(spec)
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for name, text in produced.items():
            (folder / name).write_text(text)
    assert folder.is_dir(), f"no golden files for {spec.name}: run with IIR_UPDATE_GOLDEN=1 and review"
    assert sorted(p.name for p in folder.iterdir()) == sorted(produced)
    for name, text in produced.items():
        assert text == (folder / name).read_text(), f"{spec.name}: {name} differs from {folder / name}"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_exports_never_contain_secret_values(spec: Path) -> None:
    for name, text in _exports(spec).items():
        for secret in ("golden-agent-token", "golden-admin-token"):
            assert secret not in text, f"{name} leaks a secret value"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_helm_values_carry_the_spec_verbatim(spec: Path) -> None:
    values = YAML(typ="safe").load(_exports(spec)["values.iir-router.yaml"])
    assert values["spec"] == spec.read_text() or values["spec"] == spec.read_text() + "\n"


def test_env_refs_reads_names_defaults_and_skips_comments() -> None:
    text = ("# ${IGNORED}\na: ${A}\nb: \"${B:-x} ${EXTERNAL_FOO_KEY}\"\nc: ${A:-other}\n"
            "keys:\n  - {name: ci, key: \"${IIR_KEY_CI:-}\"}\n")
    refs = env_refs(text)
    assert [(r.name, r.default, r.secret) for r in refs] == [
        ("A", None, False), ("B", "x", False), ("EXTERNAL_FOO_KEY", None, True), ("IIR_KEY_CI", "", True)]


def test_dynamic_inventory_protocol(write_spec) -> None:
    spec = write_spec(
        "version: 1\n"
        "backends:\n"
        "  mac: {kind: agent, url: 'http://10.1.2.3:5001', models: [small]}\n"
        "  gpu: {kind: llm-d, url: 'http://user:pw@10.0.0.9:8000', models: [big], model_map: {big: org/Big-7B}}\n"
        "agents: {token: '${MY_AGENT_TOKEN}'}\n"
        "routes: [{name: all, to: by-model}]\n")
    env = {"MY_AGENT_TOKEN": "s3cret"}
    built = build_table(spec, env)
    data = json.loads(inventory_list(built, env))
    assert data["iir_agents"]["hosts"] == ["mac"]
    mac = data["_meta"]["hostvars"]["mac"]
    assert mac["ansible_host"] == "10.1.2.3" and "ansible_connection" not in mac
    assert mac["iir_agent_port"] == 5001 and mac["iir_agent_bind"] == "0.0.0.0"
    gpu = data["_meta"]["hostvars"]["gpu"]
    assert gpu["iir_llmd_model"] == "org/Big-7B" and gpu["iir_llmd_endpoint"] == "http://10.0.0.9:8000/v1"
    assert data["all"]["vars"]["iir_agent_token_env"] == "MY_AGENT_TOKEN"
    assert "s3cret" not in json.dumps(data) and "pw" not in json.dumps(data)
    assert json.loads(inventory_host(built, env, "mac")) == mac
    assert json.loads(inventory_host(built, env, "nope")) == {}


def test_cli_inventory_list_is_an_ansible_inventory_script(tmp_path: Path) -> None:
    """The CLI speaks the dynamic-inventory protocol and `ansible-inventory` accepts it."""
    env = {**os.environ, **EXPORT_ENV}
    proc = subprocess.run([sys.executable, "-m", "iir", "export", "inventory", "--list", "--spec", "iir.yaml"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "laptop" in json.loads(proc.stdout)["_meta"]["hostvars"]


def test_cli_reports_spec_errors_without_traceback(write_spec) -> None:
    bad = write_spec("version: 1\nbackends: {}\nroutes: []\n")
    for args in (["inventory"], ["helm-values"], ["compose-env"], ["helm-values", "--chart", "llm-d"]):
        proc = subprocess.run([sys.executable, "-m", "iir", "export", *args, "--spec", str(bad)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr and str(bad) in proc.stderr


def test_cli_llmd_values_need_an_llmd_backend() -> None:
    proc = subprocess.run([sys.executable, "-m", "iir", "export", "helm-values", "--chart", "llm-d", "--spec", "iir.yaml"],
                          cwd=ROOT, env={**os.environ, **EXPORT_ENV}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no backend of kind llm-d" in proc.stderr


def test_cli_output_file(tmp_path: Path) -> None:
    out = tmp_path / "x.env"
    proc = subprocess.run([sys.executable, "-m", "iir", "export", "compose-env", "--spec", "iir.yaml", "-o", str(out)],
                          cwd=ROOT, env={**os.environ, **EXPORT_ENV}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "REDIS_URL=redis://redis:6379/0" in out.read_text().splitlines()
