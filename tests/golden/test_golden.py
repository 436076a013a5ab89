"""Golden tests: spec files with their exact expected diagnostics or compiled form.

- ``invalid/NAME.yaml`` → ``invalid/NAME.expected``: every diagnostic, one per line, exactly as
  printed (``file:line:col path: message``), errors and warnings in order.
- ``warnings/NAME.yaml`` → ``warnings/NAME.expected``: a valid spec's warnings.
- ``valid/NAME.yaml`` → ``valid/NAME.json``: ``table_to_dict(secrets="omit")`` plus the digest.

Regenerate after an intended change with ``IIR_REGEN_GOLDEN=1 pytest tests/golden`` and review
the diff; without the variable the tests only compare.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from iir.compile.build import build_table
from iir.compile.compiler import table_to_dict
from iir.errors import ConfigError

HERE = Path(__file__).parent
REGEN = os.environ.get("IIR_REGEN_GOLDEN") == "1"
# A fixed environment: the golden results must not depend on the machine's.
ENV = {
    "IIR_KEY_CI": "ci-secret-value",
    "IIR_ADMIN_TOKEN": "admin-secret-value",
    "IIR_AGENT_TOKEN": "agent-secret-value",
    "EXTERNAL_OPENAI_KEY": "sk-golden-openai",
}


def _cases(folder: str, ext: str = "yaml") -> list[str]:
    return sorted(p.name for p in (HERE / folder).glob(f"*.{ext}"))


def _compare(expected_file: Path, actual: str) -> None:
    if REGEN:
        expected_file.write_text(actual, encoding="utf-8")
    assert expected_file.exists(), f"{expected_file} is missing: run IIR_REGEN_GOLDEN=1 pytest tests/golden"
    assert actual == expected_file.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", _cases("invalid"))
def test_invalid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE / "invalid")
    with pytest.raises(ConfigError) as info:
        build_table(name, ENV)
    diags = info.value.diagnostics
    assert diags and any(d.severity == "error" for d in diags)
    for d in diags:
        assert d.file == name and d.line >= 1 and d.col >= 1 and "\n" not in d.message
    _compare(HERE / "invalid" / name.replace(".yaml", ".expected"), "".join(f"{d}\n" for d in diags))


@pytest.mark.parametrize("name", _cases("warnings"))
def test_warnings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE / "warnings")
    built = build_table(name, ENV)
    assert built.warnings and all(d.severity == "warning" for d in built.warnings)
    _compare(HERE / "warnings" / name.replace(".yaml", ".expected"), "".join(f"{d}\n" for d in built.warnings))


@pytest.mark.parametrize("name", _cases("valid"))
def test_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE / "valid")
    built = build_table(name, ENV)
    compiled = {"digest": built.table.digest, "table": table_to_dict(built.table, secrets="omit")}
    text = json.dumps(compiled, indent=2, sort_keys=True) + "\n"
    for secret in ENV.values():
        assert secret not in text
    _compare(HERE / "valid" / name.replace(".yaml", ".json"), text)


def test_every_case_has_its_expectation() -> None:
    for folder, ext in (("invalid", "expected"), ("warnings", "expected"), ("valid", "json")):
        inputs = {Path(n).stem for n in _cases(folder)}
        outputs = {Path(n).stem for n in _cases(folder, ext)}
        assert inputs == outputs, f"{folder}: inputs and expectations differ: {inputs ^ outputs}"
