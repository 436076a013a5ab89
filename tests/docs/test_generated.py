"""The generated reference pages are committed up to date and complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from iir.spec.schema import spec_models

ROOT = Path(__file__).resolve().parents[2]


def test_every_generated_page_is_current(gen_docs: ModuleType) -> None:
    stale = [str(page.relative_to(ROOT)) for page, text in gen_docs.generated_pages().items()
             if not page.exists() or page.read_text(encoding="utf-8") != text]
    assert not stale, f"out of date: {stale}; run `python scripts/gen_docs.py`"


def test_check_mode_fails_on_a_stale_page(gen_docs: ModuleType, tmp_path: Path, monkeypatch) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("# CLI reference\n\nhand-edited\n", encoding="utf-8")
    monkeypatch.setattr(gen_docs, "generated_pages", lambda: {stale: "fresh\n"})
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    assert gen_docs.main(["--check"]) == 1
    assert stale.read_text(encoding="utf-8") == "# CLI reference\n\nhand-edited\n"  # --check never writes
    assert gen_docs.main([]) == 0
    assert stale.read_text(encoding="utf-8") == "fresh\n"
    assert gen_docs.main(["--check"]) == 0


def test_spec_page_lists_every_field_of_every_section() -> None:
    page = (ROOT / "docs" / "reference" / "spec.md").read_text(encoding="utf-8")
    missing = []
    for model in spec_models():
        section = page.split(f"\n## {model.__name__}\n", 1)
        if len(section) != 2:
            missing.append(model.__name__)
            continue
        body = section[1].split("\n## ", 1)[0]
        missing += [f"{model.__name__}.{name}" for name in model.model_fields if f"| `{name}` |" not in body]
    assert not missing, f"not on docs/reference/spec.md: {missing}"
    assert len(spec_models()) >= 15


def test_cli_page_has_every_command(gen_docs: ModuleType) -> None:
    page = gen_docs.CLI_PAGE.read_text(encoding="utf-8")
    paths = list(gen_docs.command_paths())
    assert ("validate",) in paths and ("export", "helm-values") in paths and ("db", "migrate") in paths
    for path in paths:
        assert f"## `{' '.join(('iir', *path))}`" in page, path
        assert f"Usage: iir {' '.join(path)}".rstrip() in page, path
    # Every command of `iir --help` is on the page (the page is not built from a stale list).
    top = gen_docs.help_text(())
    listed = re.findall(r"^  ([a-z][a-z-]+)\s{2,}", top.split("Commands:", 1)[1], re.M)
    assert len(listed) >= 10
    assert all((name,) in paths for name in listed)


def test_cli_page_is_what_the_installed_command_prints(gen_docs: ModuleType) -> None:
    """The in-process rendering equals the real `iir ... --help` of a terminal that wide."""
    env = {**os.environ, "COLUMNS": str(gen_docs.WIDTH + 2)}
    for path in [(), ("export", "inventory")]:
        proc = subprocess.run([sys.executable, "-m", "iir", *path, "--help"], env=env,
                              capture_output=True, text=True, timeout=60, check=True)
        assert proc.stdout.rstrip().replace("python -m iir", "iir") == gen_docs.help_text(path).rstrip()


def test_agent_config_page_lists_every_setting(gen_docs: ModuleType) -> None:
    from iir.agent.config import AgentConfig, VllmSettings

    page = gen_docs.AGENT_PAGE.read_text(encoding="utf-8")
    for model in (AgentConfig, VllmSettings):
        for name, field in model.model_fields.items():
            assert f"| `{name}` |" in page, f"{model.__name__}.{name}"
            assert field.description, f"{model.__name__}.{name} has no description"
    for machine_path in (str(ROOT), "/home/", "/root/"):  # no machine paths (VllmSettings.python)
        assert machine_path not in page


def test_environment_page_lists_every_variable_of_env_example(gen_docs: ModuleType) -> None:
    page = gen_docs.ENV_PAGE.read_text(encoding="utf-8")
    names = re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(encoding="utf-8"), re.M)
    assert len(names) >= 30
    assert [n for n in names if f"| `{n}` |" not in page] == []


@pytest.mark.parametrize("page", ["spec.md", "cli.md", "agent-config.md", "environment.md"])
def test_generated_pages_say_so(page: str) -> None:
    text = (ROOT / "docs" / "reference" / page).read_text(encoding="utf-8")
    assert "do not edit by hand" in text.split("\n", 4)[2]
