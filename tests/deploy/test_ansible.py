"""Ansible: ansible-lint (production profile) and --syntax-check for every playbook, and the
agent playbook run FOR REAL against localhost into a temporary prefix: it creates the venv,
writes the systemd unit and the agent config from the templates, starts the agent (as a
background process: no init system here) on the tiny model, the agent registers with a real
router started by the test, a request through the router is answered by it, and a second run
(and a --check run) reports no change. A --check run before the first one changes nothing.
The router playbook runs for real the same way (see its test)."""

from __future__ import annotations

import getpass
import json
import os
import plistlib
import re
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest

from tests.conftest import free_port

from .conftest import ROOT, run, tool

pytestmark = [pytest.mark.slow, pytest.mark.deploy]

ANSIBLE = ROOT / "ansible"
PLAYBOOKS = sorted((ANSIBLE / "playbooks").glob("*.yml"))
TOKEN = "deploy-test-agent-token"


def _ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_LOCAL_TEMP": "/tmp/iir-ansible-local", "ANSIBLE_REMOTE_TEMP": "/tmp/iir-ansible-remote",
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"})
    env.update(extra)
    return env


@pytest.mark.timeout(600)
def test_every_playbook_passes_syntax_check() -> None:
    assert {p.name for p in PLAYBOOKS} >= {"agent.yml", "router.yml", "k3s.yml", "site.yml"}
    for playbook in PLAYBOOKS:
        run([tool("ansible-playbook"), "--syntax-check", str(playbook.relative_to(ANSIBLE))],
            cwd=ANSIBLE, env=_ansible_env(IIR_SPEC=str(ROOT / "iir.yaml")))


@pytest.mark.timeout(900)
def test_ansible_lint_production_profile() -> None:
    proc = run([tool("ansible-lint"), "--profile", "production", "--offline", "--nocolor"], cwd=ANSIBLE,
               env=_ansible_env(IIR_SPEC=str(ROOT / "iir.yaml")), check=False, timeout=880)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dynamic_inventory_script(tmp_path: Path) -> None:
    proc = run([tool("ansible-inventory"), "--list"], cwd=ANSIBLE,
               env=_ansible_env(IIR_SPEC=str(ROOT / "examples" / "laptop-vllm-openai.yaml"),
                                IIR_BIN=str(Path(sys.executable).parent / "iir")))
    data = json.loads(proc.stdout)
    assert data["iir_agents"]["hosts"] and data["iir_routers"]["hosts"] == ["iir-router"]


def test_launchd_plist_template_is_a_valid_plist() -> None:
    """The macOS service definition cannot be loaded here; its XML is checked instead."""
    template = (ANSIBLE / "roles" / "iir_agent" / "templates" / "iir-agent.plist.j2").read_text()
    text = jinja2.Environment(autoescape=False).from_string(template).render(
        ansible_managed="managed", iir_agent_launchd_label="dev.iir.agent.mac",
        iir_agent_prefix="/Users/me/Library/Application Support/iir & co", iir_agent_service_name="iir-agent-mac")
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == "dev.iir.agent.mac"
    assert plist["ProgramArguments"] == ["/Users/me/Library/Application Support/iir & co/bin/iir-agent-mac"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False}


# ---- the real run ------------------------------------------------------------------------


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within {timeout} s")


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real router (`iir serve`) whose only route goes to registered agents."""
    port, agent_port = free_port(), free_port()
    spec = tmp_path / "iir.yaml"
    spec.write_text(
        "version: 1\n"
        f"server: {{listen: '127.0.0.1:{port}'}}\n"
        f"state: {{registry: '{tmp_path / 'router.db'}'}}\n"
        "backends:\n"
        f"  laptop: {{kind: agent, url: 'http://127.0.0.1:{agent_port}', models: [tiny-demo], context_window: 512}}\n"
        "agents: {token: '${IIR_AGENT_TOKEN}', heartbeat_timeout: 30s}\n"
        "routes:\n"
        "  - {name: registered, match: {model: tiny-demo}, to: [agents]}\n")
    env = {**os.environ, "IIR_AGENT_TOKEN": TOKEN}
    log = open(tmp_path / "router.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "iir", "serve", "--spec", str(spec)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        yield f"http://127.0.0.1:{port}", spec
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _playbook(inventory: Path, prefix: Path, model_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    purelib = sysconfig.get_paths()["purelib"]
    extra_vars = {
        "iir_agent_prefix": str(prefix),
        "iir_agent_python": getattr(sys, "_base_executable", sys.executable),
        "iir_agent_extra_site_packages": [purelib],  # reuse torch & co. from the project venv
        "iir_agent_pip_spec": "iir[agent]",
        "iir_agent_model_path": str(model_dir),
        "iir_agent_device": "cpu",
        "iir_agent_service_manager": "systemd",
        "iir_agent_systemd_dir": str(prefix / "systemd"),
        "iir_agent_service_activate": False,
        "iir_agent_run_as_process": True,
        "iir_agent_health_timeout": 120,
        "ansible_python_interpreter": sys.executable,
    }
    return run([tool("ansible-playbook"), "-i", str(inventory), "playbooks/agent.yml",
                "-e", json.dumps(extra_vars), *extra],
               cwd=ANSIBLE, env=_ansible_env(IIR_AGENT_TOKEN=TOKEN), timeout=600)


def _recap(out: str, host: str = "laptop") -> dict[str, int]:
    m = re.search(rf"^{re.escape(host)}\s*:\s*(.*)$", out, re.M)
    assert m, out
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def _stop_agent(prefix: Path, name: str = "iir-agent-laptop") -> None:
    pidfile = prefix / "run" / f"{name}.pid"
    if pidfile.exists() and pidfile.read_text().strip():
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(1200)
def test_agent_playbook_runs_for_real_and_is_idempotent(router: tuple[str, Path], tmp_path: Path) -> None:
    from openai import OpenAI

    from iir.agent.demo_model import ensure_tiny_model

    router_url, spec = router
    model_dir = ensure_tiny_model()
    inventory = tmp_path / "inventory.yml"
    export = run([sys.executable, "-m", "iir", "export", "inventory", "--spec", str(spec), "-o", str(inventory)],
                 env={**os.environ, "IIR_AGENT_TOKEN": TOKEN, "ROUTER_URL": router_url})
    assert export.returncode == 0
    assert TOKEN not in inventory.read_text()
    prefix = tmp_path / "prefix"
    try:
        # --check on a host that has nothing yet: it reports what it would do, and does nothing.
        dry = _playbook(inventory, prefix, model_dir, "--check")
        assert _recap(dry.stdout)["failed"] == 0 and _recap(dry.stdout)["changed"] > 0, dry.stdout
        assert not prefix.exists(), sorted(str(p) for p in prefix.rglob("*"))

        first = _playbook(inventory, prefix, model_dir)
        assert _recap(first.stdout)["failed"] == 0 and _recap(first.stdout)["changed"] > 0

        # What the role wrote, from its templates, into the prefix.
        unit = (prefix / "systemd" / "iir-agent-laptop.service").read_text()
        assert f"ExecStart={prefix}/venv/bin/python -m iir agent --config {prefix}/etc/iir-agent-laptop.yaml" in unit
        assert f"EnvironmentFile={prefix}/etc/iir-agent-laptop.env" in unit and TOKEN not in unit
        env_file = prefix / "etc" / "iir-agent-laptop.env"
        assert f"IIR_AGENT_TOKEN={TOKEN}" in env_file.read_text()
        assert env_file.stat().st_mode & 0o777 == 0o600
        config = (prefix / "etc" / "iir-agent-laptop.yaml").read_text()
        assert TOKEN not in config and f'router_url: "{router_url}"' in config
        assert (prefix / "venv" / "bin" / "python").exists()

        # The agent registered with the router: a request for its model is routed to it.
        client = OpenAI(base_url=f"{router_url}/v1", api_key="unused", timeout=60, max_retries=0)
        deadline = time.monotonic() + 60
        while True:
            listed = run([sys.executable, "-m", "iir", "agents", "list", "--spec", str(spec), "--json"],
                         env={**os.environ, "IIR_AGENT_TOKEN": TOKEN}, check=False)
            if "tiny-demo" in listed.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "tiny-demo" in listed.stdout, listed.stdout + listed.stderr
        reply = client.chat.completions.create(model="tiny-demo", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=16, temperature=0)
        assert reply.choices[0].message.content == "Hello from the tiny model!"

        second = _playbook(inventory, prefix, model_dir)
        assert _recap(second.stdout)["changed"] == 0, second.stdout
        checked = _playbook(inventory, prefix, model_dir, "--check")
        assert _recap(checked.stdout)["changed"] == 0, checked.stdout
    finally:
        _stop_agent(prefix)


# ---- the router playbook, for real ------------------------------------------------------


def _router_playbook(inventory: Path, prefix: Path, spec: Path, vault: Path, *extra: str,
                     check: bool = True) -> subprocess.CompletedProcess[str]:
    """router.yml with the provider key from an Ansible Vault file (not from the environment)."""
    user = getpass.getuser()
    extra_vars = {
        "iir_router_prefix": str(prefix),
        "iir_router_python": getattr(sys, "_base_executable", sys.executable),
        "iir_router_extra_site_packages": [sysconfig.get_paths()["purelib"]],  # iir from the project venv
        "iir_router_pip_spec": "iir",
        "iir_router_spec_src": str(spec),
        "iir_router_systemd_dir": str(prefix / "systemd"),
        "iir_router_service_activate": False,
        "iir_router_run_as_process": True,
        "iir_router_create_user": False,
        "iir_router_user": user,
        "iir_router_owner": user,
        "ansible_python_interpreter": sys.executable,
    }
    env = _ansible_env()
    env.pop("EXTERNAL_OPENAI_KEY", None)
    return run([tool("ansible-playbook"), "-i", str(inventory), "playbooks/router.yml",
                "-e", json.dumps(extra_vars), "-e", f"@{vault}",
                "--vault-password-file", str(vault.with_suffix(".pw")), *extra],
               cwd=ANSIBLE, env=env, timeout=600, check=check)


def _models(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as r:
        return sorted(m["id"] for m in json.loads(r.read())["data"])


@pytest.mark.timeout(900)
def test_router_playbook_runs_for_real_and_is_idempotent(tmp_path: Path) -> None:
    """The router role into a temp prefix: venv, spec (validated), 0640 env file with the key the
    spec reads (from an Ansible Vault file), systemd unit, `iir serve` running; a second run and --check change nothing; a spec
    edit is copied and reloaded (SIGHUP, same process) and the router serves the new spec."""
    port = free_port()
    key = "sk-deploy-test-openai-key"
    spec = tmp_path / "iir.yaml"
    text = ("version: 1\n"
            f"server: {{listen: '127.0.0.1:{port}'}}\n"
            "backends:\n"
            "  openai: {kind: openai, api_key: '${EXTERNAL_OPENAI_KEY}', models: [gpt-4o-mini]}\n"
            "routes:\n"
            "  - {name: all, match: {model: '*'}, to: by-model}\n")
    spec.write_text(text)
    inventory = tmp_path / "inventory.yml"
    run([sys.executable, "-m", "iir", "export", "inventory", "--spec", str(spec), "-o", str(inventory)],
        env={**os.environ, "EXTERNAL_OPENAI_KEY": key})
    assert key not in inventory.read_text() and "EXTERNAL_OPENAI_KEY" in inventory.read_text()
    vault = tmp_path / "secrets.yml"
    vault.write_text(f"iir_router_secrets:\n  EXTERNAL_OPENAI_KEY: {key}\n")
    vault.with_suffix(".pw").write_text("deploy-test-vault-password\n")
    run([tool("ansible-vault"), "encrypt", "--vault-password-file", str(vault.with_suffix(".pw")), str(vault)],
        cwd=ANSIBLE, env=_ansible_env())
    assert vault.read_text().startswith("$ANSIBLE_VAULT") and key not in vault.read_text()
    prefix = tmp_path / "prefix"
    url = f"http://127.0.0.1:{port}"
    try:
        dry = _router_playbook(inventory, prefix, spec, vault, "--check")
        assert _recap(dry.stdout, "iir-router")["failed"] == 0, dry.stdout
        assert not prefix.exists()

        first = _router_playbook(inventory, prefix, spec, vault)
        assert _recap(first.stdout, "iir-router")["changed"] > 0
        unit = (prefix / "systemd" / "iir-router.service").read_text()
        assert f"ExecStart={prefix}/venv/bin/python -m iir serve --spec {prefix}/etc/iir.yaml --host 127.0.0.1 --port {port}" in unit
        assert key not in unit
        env_file = prefix / "etc" / "iir-router.env"
        assert f"EXTERNAL_OPENAI_KEY={key}" in env_file.read_text().splitlines()
        assert env_file.stat().st_mode & 0o777 == 0o640
        assert (prefix / "etc" / "iir.yaml").read_text() == text
        _wait_http(f"{url}/healthz", 30)
        assert _models(url) == ["gpt-4o-mini"]
        pid = (prefix / "run" / "iir-router.pid").read_text().strip()

        second = _router_playbook(inventory, prefix, spec, vault)
        assert _recap(second.stdout, "iir-router")["changed"] == 0, second.stdout
        checked = _router_playbook(inventory, prefix, spec, vault, "--check")
        assert _recap(checked.stdout, "iir-router")["changed"] == 0, checked.stdout

        spec.write_text(text.replace("models: [gpt-4o-mini]", "models: [gpt-4o-mini, gpt-4o]"))
        third = _router_playbook(inventory, prefix, spec, vault)
        assert _recap(third.stdout, "iir-router")["changed"] >= 1, third.stdout
        assert "Reload the router spec (background process)" in third.stdout
        deadline = time.monotonic() + 30
        while _models(url) != ["gpt-4o", "gpt-4o-mini"] and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _models(url) == ["gpt-4o", "gpt-4o-mini"]
        assert (prefix / "run" / "iir-router.pid").read_text().strip() == pid, "a reload, not a restart"

        # A broken spec is refused on the host (`iir validate`); the installed one keeps serving.
        installed = (prefix / "etc" / "iir.yaml").read_text()
        spec.write_text(installed.replace("to: by-model", "to: [no-such-backend]"))
        refused = _router_playbook(inventory, prefix, spec, vault, check=False)
        assert refused.returncode != 0 and "failed to validate" in refused.stdout, refused.stdout
        assert "no-such-backend" in refused.stdout
        assert (prefix / "etc" / "iir.yaml").read_text() == installed
        assert _models(url) == ["gpt-4o", "gpt-4o-mini"]
    finally:
        _stop_agent(prefix, "iir-router")
