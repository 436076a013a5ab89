"""The documentation site builds with `mkdocs build --strict`, and what the docs and README say is true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _mkdocs_config() -> dict:
    # mkdocs.yml may use !!python tags in general; ours does not, so the safe loader reads it.
    return YAML(typ="safe").load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """Broken links or anchors, pages missing from the nav, unknown files: strict mode fails on each."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in ("index.html", "reference/spec/index.html", "reference/cli/index.html",
                 "deploy/helm/index.html", "search/search_index.json"):
        assert (tmp_path / "site" / page).exists(), page
    assert "material" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")


def test_strict_build_can_fail(tmp_path: Path) -> None:
    """The same build on a copy with one broken link fails: the test above can catch a bad page."""
    import shutil

    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "index.md").open("a", encoding="utf-8") as f:
        f.write("\n[broken](routing.md#no-such-anchor)\n")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=tmp_path, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no-such-anchor" in proc.stdout + proc.stderr


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    nav = _nav_pages(_mkdocs_config()["nav"])
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == on_disk
    assert len(set(nav)) == len(nav)


def test_required_pages_exist() -> None:
    """The pages the deployment issue asks for."""
    nav = set(_nav_pages(_mkdocs_config()["nav"]))
    for page in ("quickstart.md", "concepts.md", "reference/spec.md", "reference/cli.md", "routing.md",
                 "policies.md", "deploy/compose.md", "deploy/helm.md", "deploy/ansible.md", "observability.md",
                 "requirements.md", "features.md", "providers.md", "performance.md"):
        assert page in nav, page


def _yaml_blocks() -> list[tuple[str, int, str]]:
    blocks = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"```yaml\n(.*?)```", text, re.S):
            blocks.append((str(page.relative_to(ROOT)), text[: m.start()].count("\n") + 1, m.group(1)))
    return blocks


def test_every_yaml_example_parses() -> None:
    blocks = _yaml_blocks()
    assert len(blocks) >= 5
    for where, line, body in blocks:
        try:
            YAML(typ="safe").load(body)
        except Exception as e:  # the assertion names the block
            pytest.fail(f"{where}:{line}: {e}")


def test_every_complete_spec_in_the_docs_validates(tmp_path: Path, monkeypatch) -> None:
    """A YAML block that is a whole spec (starts with `version: 1`) passes `iir validate`."""
    from iir import cli as iir_cli

    iir_cli._register()
    specs = [(w, line, body) for w, line, body in _yaml_blocks() if body.startswith("version: 1")]
    assert specs, "the docs show at least one complete spec"
    for n, (where, line, body) in enumerate(specs):
        path = tmp_path / f"spec{n}.yaml"
        path.write_text(body, encoding="utf-8")
        result = CliRunner().invoke(iir_cli.cli, ["validate", str(path)])
        assert result.exit_code == 0, f"{where}:{line}: {result.output}"


def test_no_machine_paths_in_docs_or_readme() -> None:
    for page in [*DOCS.rglob("*.md"), ROOT / "README.md", ROOT / "mkdocs.yml"]:
        text = page.read_text(encoding="utf-8")
        for machine_path in (str(ROOT), "/home/", "/root/"):
            assert machine_path not in text, (page, machine_path)


def test_docs_serve_target_serves_mkdocs_on_8001() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\ndocs-serve:", 1)[1].split("\n\n", 1)[0]
    assert "mkdocs serve -a 127.0.0.1:8001" in recipe
    assert "not built yet" not in recipe


def test_no_escaped_pipes_inside_code_spans() -> None:
    r"""MkDocs (Python-Markdown) keeps `a\|b` literally inside a code span, backslash included;
    a plain pipe inside backticks does not split a table cell there."""
    bad = []
    for page in sorted(DOCS.rglob("*.md")):
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        bad += [f"{page.relative_to(ROOT)}: {span}" for span in re.findall(r"`[^`\n]+`", text) if "\\|" in span]
    assert not bad, bad
