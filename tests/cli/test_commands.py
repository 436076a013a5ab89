"""The spec, models and db commands, in-process through click, on real files."""

from __future__ import annotations

import difflib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from iir.cli import _register, cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def _commands() -> None:
    _register()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(ROOT / "iir.yaml", tmp_path / "iir.yaml")
    monkeypatch.chdir(tmp_path)
    for var in ("SQLITE_DB_PATH", "REDIS_URL", "EXTERNAL_OPENAI_KEY", "IIR_ADMIN_TOKEN", "IIR_AGENT_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_help_lists_every_command_and_each_has_help() -> None:
    """Walk the whole command tree: every command is listed in its group's --help with a short
    description, answers --help itself, and the README's command table names every top-level one."""
    import click

    seen = []

    def walk(group: click.Group, path: list[str]) -> None:
        listing = run(*path, "--help").stdout
        for name, command in group.commands.items():
            assert f"  {name} " in listing, (path, name)
            assert (command.short_help or command.help or "").strip(), f"{[*path, name]} has no description"
            result = run(*path, name, "--help")
            assert result.exit_code == 0 and "Usage:" in result.stdout, (path, name)
            seen.append(" ".join([*path, name]))
            if isinstance(command, click.Group):
                walk(command, [*path, name])

    walk(cli, [])
    for expected in ("validate", "compile", "schema", "explain", "models add", "models list", "models update",
                     "models remove", "db migrate", "db seed", "agent", "agents list", "serve", "run-demo"):
        assert expected in seen
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in cli.commands:
        assert f"`iir {name}" in readme, f"README does not mention `iir {name}`"


def test_validate_shipped_specs() -> None:
    result = run("validate", str(ROOT / "iir.yaml"), *(str(ROOT / "examples" / e) for e in EXAMPLES))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count(": ok (") == len(EXAMPLES) + 1
    assert " error" not in result.stderr
    assert {"laptop-only.yaml", "laptop-vllm-openai.yaml", "llmd-cluster.yaml"} <= set(EXAMPLES)


def test_compile_persists_and_summarises(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run("compile", "iir.yaml", "--db", "reg.db")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "iir.yaml: 2 backends, 2 models, 3 routes"
    assert lines[1].startswith("digest ") and len(lines[1]) == len("digest ") + 64
    assert lines[2] == "registry reg.db: snapshot 1 active"
    rows = sqlite3.connect(workdir / "reg.db").execute("SELECT digest, active FROM snapshots").fetchall()
    assert rows == [(lines[1].removeprefix("digest "), 1)]
    # SQLITE_DB_PATH is the default registry
    monkeypatch.setenv("SQLITE_DB_PATH", str(workdir / "env.db"))
    assert run("compile").exit_code == 0 and (workdir / "env.db").exists()


def test_schema_output_and_check(workdir: Path) -> None:
    schema = json.loads(run("schema").stdout)
    assert schema["title"] == "Spec" and "backends" in schema["properties"]
    assert run("schema", "--check", "-o", str(ROOT / "config" / "iir.schema.json")).exit_code == 0
    assert run("schema", "--markdown", "--check", "-o", str(ROOT / "docs" / "reference" / "spec.md")).exit_code == 0
    (workdir / "old.json").write_text("{}")
    stale = run("schema", "--check", "-o", "old.json")
    assert stale.exit_code == 1 and "out of date" in stale.stderr
    assert run("schema", "-o", "new.json").exit_code == 0
    assert json.loads((workdir / "new.json").read_text()) == schema


def test_explain_text_and_json(workdir: Path) -> None:
    text = run("explain", "-m", "auto", "-p", "hello")
    assert text.exit_code == 0
    assert "→ 0. light-on-device: MATCH (all conditions hold)" in text.stdout
    assert "1. laptop: kept (sends model 'tiny-demo')" in text.stdout
    assert "2. openai: dropped (not configured: no API key: set EXTERNAL_OPENAI_KEY or `api_key`)" in text.stdout
    report = json.loads(run("explain", "-m", "auto", "-p", "hi", "--tools", "--format", "json").stdout)
    assert report["route"] == "heavy" and report["tools"] is True
    assert report["routes"][0] == {"route": "light-on-device", "index": 0, "matched": False, "reason": "request has tools"}
    (workdir / "req.json").write_text(json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}))
    by_model = json.loads(run("explain", "-r", "req.json", "--format", "json").stdout)
    assert by_model["route"] == "by-model" and by_model["candidates"][0]["backend"] == "openai"
    nothing = run("explain", "-m", "auto", "-p", "word " * 2000)
    assert "2. laptop: dropped (prompt (" in nothing.stdout and "no candidate left" in nothing.stdout
    assert "503 no_backend_available" in nothing.stdout  # openai is unconfigured: state, not the request
    # every candidate dropped for what the request is: the router answers 400, as explain says
    tools = json.loads(run("explain", "-m", "tiny-demo", "-p", "hi", "--tools", "--format", "json").stdout)
    assert tools["status"] == 400 and tools["candidates"][0]["reason"] == "does not support tools"
    too_long = run("explain", "-m", "tiny-demo", "-p", "word " * 2000)
    assert "the router answers 400 context_length_exceeded" in too_long.stdout
    assert run("explain", "-p", "no model").exit_code == 2
    assert run("explain", "-m", "auto", "-H", "novalue").exit_code == 2
    (workdir / "bad.json").write_text("[1]")
    assert run("explain", "-r", "bad.json").exit_code == 2
    with (workdir / "huge.json").open("wb") as f:
        f.truncate(50 * 1024 * 1024)
    huge = run("explain", "-r", "huge.json")
    assert huge.exit_code == 2 and "server.max_body is 4194304 bytes, so the router answers 413" in huge.stderr


def test_explain_applies_the_client_keys_allow_list(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the router does: a declared model the key may not use is refused (403) before routing;
    for an alias such as `auto`, candidates serving a model outside the key's list are dropped."""
    shutil.copy(ROOT / "examples" / "laptop-vllm-openai.yaml", workdir / "spec.yaml")
    monkeypatch.setenv("IIR_KEY_CI", "ci-key-value-1234")  # models: ["local/*", gpt-4o-mini]
    monkeypatch.delenv("IIR_KEY_TEAM", raising=False)
    refused = run("explain", "--spec", "spec.yaml", "-m", "llama-3.1-8b", "--key", "ci")
    assert refused.exit_code == 0
    assert "refused: client key 'ci' may not use model 'llama-3.1-8b': the router answers 403" in refused.stdout
    assert "routes:" not in refused.stdout
    auto = json.loads(run("explain", "--spec", "spec.yaml", "-m", "auto", "--key", "ci", "--format", "json").stdout)
    assert auto["refused"] is None and auto["route"] == "short-on-device"
    assert auto["candidates"][:2] == [
        {"backend": "laptop", "kept": True, "reason": "sends model 'local/mistral-7b-instruct-q4'"},
        {"backend": "gpu-box", "kept": False, "reason": "allowed-by-key: the client key may not use model 'llama-3.1-8b'"}]
    unknown = run("explain", "--spec", "spec.yaml", "-m", "auto", "--key", "cii")
    assert unknown.exit_code == 2 and "unknown client key 'cii' (did you mean 'ci'?)" in unknown.stderr
    disabled = run("explain", "--spec", "spec.yaml", "-m", "auto", "--key", "team")
    assert disabled.exit_code == 2 and "client key 'team' is disabled" in disabled.stderr


def _ops(old: str, new: str) -> list[tuple[str, list[str], list[str]]]:
    a, b = old.splitlines(True), new.splitlines(True)
    return [(t, a[i1:i2], b[j1:j2]) for t, i1, i2, j1, j2 in
            difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if t != "equal"]


def test_models_add_keeps_every_comment_and_untouched_line(workdir: Path) -> None:
    original = (workdir / "iir.yaml").read_text()
    assert original.count("#") >= 3  # the shipped spec is commented
    result = run("models", "add", "tiny-2", "-b", "laptop", "--price-input", "0", "--price-output", "0")
    assert result.exit_code == 0, result.stderr
    edited = (workdir / "iir.yaml").read_text()
    ops = _ops(original, edited)
    assert [t for t, _, _ in ops] == ["replace", "insert"]
    assert ops[0][1] == ["    models: [tiny-demo]\n"] and ops[0][2] == ["    models: [tiny-demo, tiny-2]\n"]
    assert ops[1][2] == ["    price: {tiny-2: {input: 0.0, output: 0.0}}\n"]
    changed = {line for _, old, _ in ops for line in old}
    kept = [line for line in original.splitlines(True) if line not in changed]
    assert all(line in edited.splitlines(True) for line in kept)
    assert [ln for ln in original.splitlines() if ln.lstrip().startswith("#")] == \
           [ln for ln in edited.splitlines() if ln.lstrip().startswith("#")]
    listed = json.loads(run("models", "list", "--format", "json").stdout)
    assert ("tiny-2", "laptop") in {(r["model"], r["backend"]) for r in listed}
    assert run("models", "remove", "tiny-2").exit_code == 0
    assert (workdir / "iir.yaml").read_text() == original


def test_models_update_and_table_listing(workdir: Path) -> None:
    assert run("models", "update", "tiny-demo", "--rename", "tiny", "--upstream", "tiny-demo").exit_code == 0
    text = (workdir / "iir.yaml").read_text()
    assert "models: [tiny]" in text and "model_map: {tiny: tiny-demo}" in text
    out = run("models", "list").stdout
    assert out.splitlines()[0].startswith("MODEL")
    assert any(line.split()[:4] == ["tiny", "laptop", "agent", "tiny-demo"] for line in out.splitlines())
    assert run("models", "update", "tiny").exit_code == 2  # nothing to update


def test_models_refuses_invalid_results(workdir: Path) -> None:
    before = (workdir / "iir.yaml").read_bytes()
    no_url = run("models", "add", "llama", "-b", "gpu", "--kind", "vllm")
    assert no_url.exit_code == 1
    assert no_url.stderr.splitlines()[0] == "iir.yaml: refusing to write an invalid spec; the edit would cause:"
    assert "a backend of kind 'vllm' needs a url" in no_url.stderr
    last = run("models", "remove", "gpt-4o-mini")
    assert last.exit_code == 1 and "remove the backend instead" in last.stderr
    typo = run("models", "add", "x", "-b", "laptpo")
    assert typo.exit_code == 1 and "did you mean 'laptop'?" in typo.stderr
    assert run("models", "add", "x", "-b", "laptop", "--price-input", "1").exit_code == 2
    assert (workdir / "iir.yaml").read_bytes() == before
    assert sorted(p.name for p in workdir.iterdir()) == ["iir.yaml"]  # no temp files left behind


def test_db_migrate_seed_snapshots(workdir: Path) -> None:
    assert run("db", "migrate", "--db", "r.db").stdout == "r.db: applied m001_initial\n"
    assert run("db", "migrate", "--db", "r.db").stdout == "r.db: up to date (1 migrations)\n"
    seeded = run("db", "seed", *(str(ROOT / "examples" / e) for e in EXAMPLES), "--db", "r.db")
    assert seeded.exit_code == 0, seeded.stderr
    assert seeded.stdout.count(": snapshot ") == len(EXAMPLES)
    snaps = run("db", "snapshots", "--db", "r.db").stdout.splitlines()
    assert len(snaps) == len(EXAMPLES) and snaps[0].startswith("*")


def test_agents_list_without_a_registry_creates_none(workdir: Path) -> None:
    result = run("agents", "list")
    assert result.exit_code == 0 and result.stdout == "no agents registered\n"
    assert not (workdir / "iir.db").exists()


def test_serve_refuses_a_port_out_of_range(workdir: Path) -> None:
    """--port 70000 used to listen on 4464 (70000 mod 65536)."""
    result = run("serve", "--port", "70000")
    assert result.exit_code == 2 and "0<=x<=65535" in result.output


def test_db_snapshots_without_a_registry_creates_none(workdir: Path) -> None:
    result = run("db", "snapshots", "--db", "none.db")
    assert result.exit_code == 0 and "no registry at none.db" in result.stdout
    assert not (workdir / "none.db").exists()


def test_run_demo_refuses_taken_ports_before_starting_anything(workdir: Path) -> None:
    """Something else on the agent's or the router's port would pass for the demo's own process."""
    import socket

    from tests.conftest import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        spec = (workdir / "iir.yaml").read_text()
        for agent_port, router_port, what in ((busy, free_port(), "the demo agent"), (free_port(), busy, "the router")):
            (workdir / "demo.yaml").write_text(spec.replace("127.0.0.1:5000", f"127.0.0.1:{agent_port}").replace(
                "listen: 127.0.0.1:8000", f"listen: 127.0.0.1:{router_port}"))
            result = run("run-demo", "--spec", "demo.yaml")
            assert result.exit_code == 1
            assert f"iir run-demo: cannot start {what} on 127.0.0.1:{busy}: Address already in use" in result.stderr
            assert "starting" not in result.stderr


def test_models_edit_never_overwrites_a_concurrent_save(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import iir.cmd.models as models_cmd

    real_build = models_cmd.build_text
    calls = []

    def build_then_someone_saves(text: str, name: str, env, *mode):  # type: ignore[no-untyped-def]
        calls.append(name)
        if len(calls) == 2:  # while the edited text is being validated, another editor saves the file
            (workdir / "iir.yaml").write_text((workdir / "iir.yaml").read_text() + "# saved by someone else\n")
        return real_build(text, name, env, *mode)

    monkeypatch.setattr(models_cmd, "build_text", build_then_someone_saves)
    result = run("models", "add", "qwen", "--backend", "laptop")
    assert result.exit_code == 1 and "changed on disk while this edit was prepared" in result.stderr
    assert (workdir / "iir.yaml").read_text().endswith("# saved by someone else\n")
    assert "qwen" not in (workdir / "iir.yaml").read_text()
