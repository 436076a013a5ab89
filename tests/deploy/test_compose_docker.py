"""docker-compose.yml validated by real Compose (Debian's docker-compose v1) and dclint;
Dockerfiles linted by hadolint. No Docker engine is needed for any of it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from .conftest import ROOT, run, tool

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
PROFILES = ["--profile", "agent", "--profile", "gpu"]
pytestmark = [pytest.mark.slow, pytest.mark.deploy]


def _compose_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env["COMPOSE_PROJECT_NAME"] = "iir"
    return env


def test_dockerfiles_exist() -> None:
    assert {p.name for p in DOCKERFILES} >= {"router.Dockerfile", "agent.Dockerfile", "agent-vllm.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    run([tool("hadolint"), "--failure-threshold", "info", str(dockerfile)])


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    proc = run([tool("hadolint"), "--failure-threshold", "info", str(bad)], check=False)
    assert proc.returncode != 0 and "DL3007" in proc.stdout  # the `latest` tag


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_non_root_with_healthcheck(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage must run as a non-root user"
    assert re.search(r"^HEALTHCHECK\s", text, re.M)
    if dockerfile.name != "agent-vllm.Dockerfile":
        assert len(re.findall(r"^FROM\s", text, re.M)) >= 2, "multi-stage build expected"


def test_compose_config_by_docker_compose(tmp_path: Path) -> None:
    """Real Compose parses, interpolates and validates the file, with every profile enabled."""
    proc = run([tool("docker-compose"), "-f", "docker-compose.yml", *PROFILES, "config"], env=_compose_env(tmp_path))
    config = YAML(typ="safe").load(proc.stdout)
    assert set(config["services"]) == {"router", "redis", "agent", "agent-vllm"}
    assert set(config["volumes"]) >= {"registry"}
    router = config["services"]["router"]
    assert any(str(v).startswith("registry:/var/lib/iir") for v in router["volumes"]), router["volumes"]
    assert router["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    port = router["ports"][0]
    assert (str(port.get("published")), port.get("host_ip")) == ("8000", "127.0.0.1") if isinstance(port, dict) \
        else port.startswith("127.0.0.1:8000:8000"), port


def test_compose_profiles_keep_agents_optional(tmp_path: Path) -> None:
    proc = run([tool("docker-compose"), "-f", "docker-compose.yml", *PROFILES, "config"], env=_compose_env(tmp_path))
    services = YAML(typ="safe").load(proc.stdout)["services"]
    assert services["agent"]["profiles"] == ["agent"]
    assert services["agent-vllm"]["profiles"] == ["gpu"]
    assert "profiles" not in services["router"] and "profiles" not in services["redis"]
    gpu = services["agent-vllm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def test_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator can fail: an unknown service key is reported."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("    restart: unless-stopped", "    restartt: no", 1))
    shutil.copytree(ROOT / "docker", tmp_path / "docker")
    proc = run([tool("docker-compose"), "-f", str(broken), "config", "-q"], cwd=tmp_path, env=_compose_env(tmp_path), check=False)
    assert proc.returncode != 0 and "restartt" in proc.stderr


def test_dclint_clean() -> None:
    run([tool("dclint"), "docker-compose.yml"])


def test_compose_spec_is_valid() -> None:
    proc = run([str(Path(tool("python")).parent / "iir"), "validate", "docker/iir.compose.yaml"])
    assert "ok" in proc.stdout
