"""Bad spec files: one-line diagnostics, exit 1, never a traceback.

Every acceptance case runs in-process through the click command (fast), and all of them once
more through a real ``python -m iir`` process, whose stderr must hold exactly the golden
diagnostics and no traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from iir.cli import _register, cli

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "invalid"
DIAGNOSTIC = re.compile(r"^[^\s:]+:\d+:\d+ (\S+: )?\S.*$")
ACCEPTANCE = ["empty", "binary", "syntax-error", "tabs", "duplicate-key", "wrong-types", "unknown-keys",
              "undefined-var", "non-utf8", "not-a-mapping", "alias-bomb"]


@pytest.fixture(scope="module", autouse=True)
def _commands() -> None:
    _register()


def _invoke(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[str]]:
    monkeypatch.chdir(cwd)
    for k in list(os.environ):
        if k.startswith("IIR_GOLDEN_"):
            monkeypatch.delenv(k)
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr.splitlines()


def _expected(case: str) -> list[str]:
    return (GOLDEN / f"{case}.expected").read_text(encoding="utf-8").splitlines()


def _one_line_each(lines: list[str], name: str) -> None:
    assert lines, "no diagnostic printed"
    for line in lines:
        assert line.startswith(f"{name}:") and DIAGNOSTIC.match(line), line


@pytest.mark.parametrize("case", ACCEPTANCE)
def test_validate_bad_file(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"{case}.yaml"
    shutil.copy(GOLDEN / name, tmp_path / name)
    code, lines = _invoke(["validate", name], tmp_path, monkeypatch)
    assert code == 1
    _one_line_each(lines, name)
    assert lines == _expected(case)


def test_fifty_megabyte_and_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (tmp_path / "big.yaml").open("wb") as f:
        f.truncate(50 * 1024 * 1024)
    assert _invoke(["validate", "big.yaml"], tmp_path, monkeypatch) == (
        1, ["big.yaml:1:1 file is 52428800 bytes; a spec may be at most 5242880 bytes"])
    assert _invoke(["validate", "nope.yaml"], tmp_path, monkeypatch) == (
        1, ["nope.yaml:1:1 cannot read spec: No such file or directory"])


@pytest.mark.parametrize("command", [["compile", "bad.yaml", "--db", "x.db"], ["explain", "--spec", "bad.yaml", "-m", "auto"],
                                     ["models", "list", "--spec", "bad.yaml"], ["db", "seed", "bad.yaml", "--db", "x.db"],
                                     ["models", "add", "m", "-b", "laptop", "--spec", "bad.yaml"]])
def test_other_commands_on_a_bad_file(command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(GOLDEN / "unknown-keys.yaml", tmp_path / "bad.yaml")
    before = (tmp_path / "bad.yaml").read_bytes()
    code, lines = _invoke(command, tmp_path, monkeypatch)
    assert code == 1
    assert all(DIAGNOSTIC.match(line) or line.startswith("bad.yaml: refusing") for line in lines), lines
    assert (tmp_path / "bad.yaml").read_bytes() == before
    if command[0] == "compile":
        assert not (tmp_path / "x.db").exists()


def test_real_process_never_prints_a_traceback(tmp_path: Path) -> None:
    names = []
    for case in ACCEPTANCE:
        shutil.copy(GOLDEN / f"{case}.yaml", tmp_path / f"{case}.yaml")
        names.append(f"{case}.yaml")
    with (tmp_path / "big.yaml").open("wb") as f:
        f.truncate(50 * 1024 * 1024)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IIR_GOLDEN_")}
    proc = subprocess.run([sys.executable, "-m", "iir", "validate", *names, "big.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    expected = [line for case in ACCEPTANCE for line in _expected(case)]
    assert proc.stderr.splitlines() == [*expected, "big.yaml:1:1 file is 52428800 bytes; a spec may be at most 5242880 bytes"]
    assert proc.stdout == ""


def test_json_report_for_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for case in ("tabs", "empty"):
        shutil.copy(GOLDEN / f"{case}.yaml", tmp_path / f"{case}.yaml")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["validate", "tabs.yaml", "empty.yaml", "--format", "json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["errors"] == 2 and report["warnings"] == 0
    assert [f["file"] for f in report["files"]] == ["tabs.yaml", "empty.yaml"]
    assert report["files"][0]["diagnostics"][0] == {
        "file": "tabs.yaml", "line": 3, "col": 1, "path": "", "severity": "error",
        "message": "YAML syntax error: tab character; YAML is indented with spaces, not tabs"}
    github = CliRunner().invoke(cli, ["validate", "tabs.yaml", "--format", "github"])
    assert github.stdout == ("::error file=tabs.yaml,line=3,col=1::YAML syntax error: tab character; "
                             "YAML is indented with spaces, not tabs\n")


EDITS = [["models", "add", "m", "-b", "laptop", "--spec", "{f}"], ["models", "update", "m", "--upstream", "u", "--spec", "{f}"],
         ["models", "remove", "m", "--spec", "{f}"], ["models", "list", "--spec", "{f}"],
         ["compile", "{f}", "--db", "x.db"], ["explain", "--spec", "{f}", "-m", "auto"], ["db", "seed", "{f}", "--db", "x.db"]]


@pytest.mark.parametrize("case", [*ACCEPTANCE, "big"])
def test_every_bad_file_through_every_command(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The editing commands read the file the loader's way too: the same one-line diagnostics,
    exit 1, the file left byte-identical, no registry written."""
    name = f"{case}.yaml"
    if case == "big":
        with (tmp_path / name).open("wb") as f:
            f.truncate(50 * 1024 * 1024)
        expected = [f"{name}:1:1 file is 52428800 bytes; a spec may be at most 5242880 bytes"]
    else:
        shutil.copy(GOLDEN / name, tmp_path / name)
        expected = _expected(case)
    before = (tmp_path / name).read_bytes()
    for command in EDITS:
        if case == "undefined-var" and command[0] in ("models", "explain"):
            continue  # offline tools load leniently: tests/cli/test_missing_env.py
        code, lines = _invoke([a.replace("{f}", name) for a in command], tmp_path, monkeypatch)
        assert code == 1, command
        assert lines == expected, command
        assert (tmp_path / name).read_bytes() == before
        assert not (tmp_path / "x.db").exists()


def test_serve_on_a_taken_port_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    import socket

    root = Path(__file__).resolve().parents[2]
    spec = (root / "iir.yaml").read_text(encoding="utf-8").replace("${SQLITE_DB_PATH:-iir.db}", str(tmp_path / "r.db"))
    (tmp_path / "iir.yaml").write_text(spec, encoding="utf-8")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "iir", "serve", "--port", str(port)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert (f"iir serve: cannot listen on 127.0.0.1:{port}: Address already in use "
            "(is another router already running there?)") in proc.stderr.splitlines()
