"""`make docker-dev` / `make docker-down` are honest without a Docker engine, and `make k3s-up`
(scripts/k3s-up.sh) installs both charts with the values exported from the spec: with DRY_RUN=1
the exact helm invocations are rendered client-side and the manifests checked against the
Kubernetes schemas. (Installing k3s itself needs root and systemd: not on this machine.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from .conftest import ROOT, VENV_BIN, run, tool

pytestmark = [pytest.mark.slow, pytest.mark.deploy]


def _no_engine_env(tmp: Path) -> dict[str, str]:
    tool("docker-compose")  # a Compose implementation is there; only the engine is missing
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_", "MAKE"))}
    env["DOCKER_HOST"] = f"unix://{tmp}/no-engine.sock"
    return env


@pytest.mark.parametrize(("target", "verb"), [("docker-dev", "started"), ("docker-down", "removed")])
def test_docker_targets_say_there_is_no_engine(target: str, verb: str, tmp_path: Path) -> None:
    proc = run(["make", "--no-print-directory", target], env=_no_engine_env(tmp_path), check=False, timeout=120)
    assert proc.returncode != 0
    assert f"make {target}: no Docker engine is reachable on this machine (unix://{tmp_path}/no-engine.sock)" in proc.stderr
    assert f"Nothing was {verb}." in proc.stderr
    assert "Traceback" not in proc.stderr


def _k3s_dry_run(spec: str) -> tuple[str, list[dict], str]:
    env = {**os.environ, "DRY_RUN": "1", "SPEC": spec, "HELM": tool("helm"), "KUBECTL": tool("kubectl"),
           "VENV": str(VENV_BIN.parent)}
    env.pop("KUBECONFIG", None)
    proc = run(["bash", "scripts/k3s-up.sh"], env=env, timeout=180)
    docs = [d for d in YAML(typ="safe").load_all(proc.stdout) if d]
    return proc.stdout, docs, proc.stderr


@pytest.mark.parametrize("spec", ["examples/llmd-cluster.yaml", "iir.yaml"])
def test_k3s_up_installs_both_charts_from_the_spec(spec: str, tmp_path: Path) -> None:
    manifests, docs, progress = _k3s_dry_run(spec)
    assert "nothing was installed" in progress
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert ("Service", "llm-d") in by_kind and ("Service", "iir-router") in by_kind
    router = by_kind[("Deployment", "iir-router")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in router["env"]}
    assert env["LLMD_ENDPOINT"] == "http://llm-d.llm-d.svc.cluster.local:8000"
    assert router["image"] == "iir-router:0.1.0"
    spec_cm = by_kind[("ConfigMap", "iir-router-spec")]["data"]["iir.yaml"]
    assert spec_cm.strip() == (ROOT / spec).read_text().strip()
    rendered = tmp_path / "k3s-up.yaml"
    rendered.write_text(manifests)
    run([tool("kubernetes-validate"), "--strict", "--quiet", str(rendered)])
