""".env.example documents every environment variable the project reads (DESIGN.md rule 11)."""

from __future__ import annotations

import re

from iir.spec.presets import PRESETS

from .conftest import ROOT

# Reads of a named variable: os.environ["X"], os.environ.get("X"), os.getenv("X"),
# env.get("X"), env["X"], environ.setdefault("X"), "X" in env.
_READ = re.compile(
    r"""(?:environ|getenv|\benv)\s*(?:\.get|\.setdefault|\.pop)?\s*[\[(]\s*["']([A-Z][A-Z0-9_]+)["']"""
    r"""|["']([A-Z][A-Z0-9_]+)["']\s+in\s+(?:os\.environ|env)\b""")
_CONSTANT = re.compile(r"""^\s*[A-Z_]*ENV[A-Z_]*\s*=\s*["']([A-Z][A-Z0-9_]+)["']""", re.M)
_SPEC_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_COMPOSE_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)")


def _documented() -> set[str]:
    names = set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.match(r"^([A-Z][A-Z0-9_]*)=", line)
        if m:
            names.add(m.group(1))
    return names


def _read_by_code() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted((ROOT / "iir").rglob("*.py")):
        text = path.read_text()
        for m in _READ.finditer(text):
            found.setdefault(m.group(1) or m.group(2), str(path.relative_to(ROOT)))
        for m in _CONSTANT.finditer(text):
            found.setdefault(m.group(1), str(path.relative_to(ROOT)))
    for preset in PRESETS.values():
        for name in (preset.key_env, preset.url_env):
            if name:
                found.setdefault(name, "iir/spec/presets.py")
    for spec in [ROOT / "iir.yaml", *sorted((ROOT / "examples").glob("*.yaml"))]:
        for m in _SPEC_REF.finditer(spec.read_text()):
            found.setdefault(m.group(1), str(spec.relative_to(ROOT)))
    for m in _COMPOSE_REF.finditer((ROOT / "docker-compose.yml").read_text()):
        found.setdefault(m.group(1), "docker-compose.yml")
    return found


def test_the_scan_finds_the_documented_overrides() -> None:
    found = _read_by_code()
    for name in ("SQLITE_DB_PATH", "REDIS_URL", "CACHE_TTL", "LOG_LEVEL", "LLMD_ENDPOINT",
                 "EXTERNAL_OPENAI_KEY", "OPENAI_BASE_URL"):
        assert name in found


def test_every_variable_read_is_in_env_example() -> None:
    documented = _documented()
    missing = {name: where for name, where in _read_by_code().items() if name not in documented}
    assert not missing, f"add these to .env.example (name: first place read): {missing}"


def test_env_example_has_no_secret_values() -> None:
    for line in (ROOT / ".env.example").read_text().splitlines():
        name, _, value = line.partition("=")
        if re.search(r"(KEY|TOKEN)$", name):
            assert value == "", f"{name} must be empty in .env.example"
