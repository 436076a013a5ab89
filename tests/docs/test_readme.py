"""The README is true: its make targets and commands exist, its links resolve, and its curl and
SDK examples get the demo answer from the real router serving the real iir.yaml in front of the
real demo agent (what `make run` starts)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _make_targets() -> list[str]:
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return re.findall(r"^\s+(?:\x1b\[[0-9;]*m)?([a-z0-9-]+)", out, re.M)


def test_first_screen_has_exactly_the_two_newcomer_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    assert README.index("make run") < 1200  # on the first screen


def test_every_make_target_is_listed_and_every_listed_one_exists() -> None:
    targets = _make_targets()
    assert {"run", "test", "lint", "docs-serve", "bench"} <= set(targets)
    listed = set(re.findall(r"^\| `make ([a-z0-9-]+)`", README, re.M))
    assert listed == set(targets), f"missing: {set(targets) - listed}; not a target: {listed - set(targets)}"


def test_every_cli_command_is_listed_and_every_listed_one_exists() -> None:
    from click.testing import CliRunner

    from iir import cli as iir_cli

    iir_cli._register()
    commands = set(iir_cli.cli.commands)
    listed = set(re.findall(r"^\| `iir ([a-z-]+)", README, re.M))
    assert listed == commands, f"missing: {commands - listed}; not a command: {listed - commands}"
    groups = re.findall(r"^\| `iir ([a-z-]+ [a-z][a-z-]*(?:\\\|[a-z][a-z-]*)*)", README, re.M)
    assert len(groups) >= 4, groups  # models, db, export, agents
    for sub in groups:
        group, names = sub.split(" ", 1)
        for name in names.split("\\|"):
            result = CliRunner().invoke(iir_cli.cli, [group, name, "--help"])
            assert result.exit_code == 0, f"iir {group} {name}: {result.output}"


def test_readme_links_resolve() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert len(links) >= 15
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing, missing


# ---- the examples, against the real thing -------------------------------------------------------

async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[str]:
    """The demo agent and the router on iir.yaml (ports and registry moved to this test's own)."""
    from iir.agent.config import AgentConfig
    from iir.agent.demo_model import ensure_tiny_model
    from iir.agent.engine_transformers import TransformersEngine
    from iir.agent.service import create_app as create_agent_app
    from iir.compile.build import build_table
    from iir.server.app import create_app as create_router_app
    from iir.server.state import TableState
    from tests.conftest import free_port

    agent_port, router_port = free_port(), free_port()
    spec = (ROOT / "iir.yaml").read_text(encoding="utf-8")
    assert "http://127.0.0.1:5000" in spec and "listen: 127.0.0.1:8000" in spec
    spec = (spec.replace("http://127.0.0.1:5000", f"http://127.0.0.1:{agent_port}")
            .replace("listen: 127.0.0.1:8000", f"listen: 127.0.0.1:{router_port}")
            .replace("${SQLITE_DB_PATH:-iir.db}", str(tmp_path / "iir.db")))
    (tmp_path / "iir.yaml").write_text(spec, encoding="utf-8")

    model_dir = await asyncio.to_thread(ensure_tiny_model)
    engine = TransformersEngine(str(model_dir), "tiny-demo", device="cpu")
    await asyncio.to_thread(engine._load)
    agent = await _serve(create_agent_app(engine, AgentConfig(model="tiny-demo")), agent_port)
    built = build_table(tmp_path / "iir.yaml", {})  # no EXTERNAL_OPENAI_KEY: as on a fresh machine
    router = await _serve(create_router_app(TableState(path=tmp_path / "iir.yaml", built=built, env=lambda: {}),
                                            watch=False), router_port)
    try:
        yield f"http://127.0.0.1:{router_port}"
    finally:
        await router.cleanup()
        await agent.cleanup()
        engine._executor.shutdown(wait=True)


def _curl_example() -> tuple[str, dict[str, str], dict]:
    block = re.search(r"```bash\n(curl .*?)```", README, re.S)
    assert block is not None
    args = shlex.split(block.group(1).replace("\\\n", " "))
    url = args[args.index("curl") + 2] if args[1] == "-s" else args[1]
    headers = dict(h.split(": ", 1) for h in (args[i + 1] for i, a in enumerate(args) if a == "-H"))
    body = json.loads(args[args.index("-d") + 1])
    return url, headers, body


async def test_readme_curl_example_answers(demo: str) -> None:
    from iir.agent.demo_model import DEMO_ANSWER

    url, headers, body = _curl_example()
    assert url.startswith("http://127.0.0.1:8000/")
    async with aiohttp.ClientSession() as session, session.post(
            url.replace("http://127.0.0.1:8000", demo), headers=headers, json=body) as resp:
        data = await resp.json()
        assert resp.status == 200, data
        assert resp.headers["x-iir-backend"] == "laptop"
        assert resp.headers["x-iir-route"].startswith("light-on-device")
    assert data["model"] == "auto"
    assert data["choices"][0]["message"]["content"] == DEMO_ANSWER
    assert DEMO_ANSWER in README


async def test_readme_sdk_example_answers(demo: str) -> None:
    from iir.agent.demo_model import DEMO_ANSWER

    block = re.search(r"```python\n(from openai import OpenAI.*?)```", README, re.S)
    assert block is not None
    code = block.group(1).replace("http://127.0.0.1:8000", demo)
    assert code != block.group(1)
    namespace: dict = {}
    await asyncio.to_thread(exec, code, namespace)  # the SDK is synchronous; the router runs on this loop
    assert namespace["reply"].choices[0].message.content == DEMO_ANSWER
