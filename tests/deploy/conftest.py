"""Shared helpers for the deployment tests: repo paths and the tool locations make deploy-tools uses."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".cache" / "tools" / "bin"
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"

# A fixed environment for exports, so golden files do not depend on the caller's shell.
EXPORT_ENV = {
    "LLMD_ENDPOINT": "http://10.0.0.20:8000",
    "IIR_AGENT_TOKEN": "golden-agent-token",
    "IIR_ADMIN_TOKEN": "golden-admin-token",
}


def tool(name: str) -> str:
    """Path of a deploy tool (from `make deploy-tools`); the test FAILS when it is missing."""
    for candidate in (TOOLS / name, VENV_BIN / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} is not installed: run `make deploy-tools` (it installs every deployment tool)")


def run(args: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 300,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def helm_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[key] = str(tmp / key.lower())
    return env


def example_specs() -> list[Path]:
    """Every spec the exports are checked on: iir.yaml, examples/*.yaml, the Compose spec."""
    specs = [ROOT / "iir.yaml", *sorted((ROOT / "examples").glob("*.yaml")), ROOT / "docker" / "iir.compose.yaml"]
    return [p for p in specs if p.exists()]
