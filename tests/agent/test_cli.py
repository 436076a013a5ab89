"""`iir agent` / `python -m iir.agent` as real processes: serve, stop on SIGTERM, clear start-up errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from iir.agent.demo_model import DEMO_ANSWER
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(600)


def _get(url: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_agent_process_serves_and_stops_on_sigterm(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(f"models: {{tiny-demo: '{tiny_model_dir}'}}\nmodel: tiny-demo\ndevice: cpu\nmax_queue: 4\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("ROUTER_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "iir.agent", "--config", str(config), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                status, health = _get(f"http://127.0.0.1:{port}/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "agent did not start"
                time.sleep(0.2)
        assert status == 200 and health["model"] == "tiny-demo" and health["max_queue"] == 4
        status, body = _get(f"http://127.0.0.1:{port}/infer", {"prompt": "Hi!", "temperature": 0})
        assert status == 200 and body["text"] == DEMO_ANSWER
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        out = proc.stdout.read() if proc.stdout else ""
        assert f"serving tiny-demo on http://127.0.0.1:{port}" in out
        assert "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_weights_fail_clearly_naming_the_path(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}  # the default model maps under ~/models
    proc = subprocess.run([sys.executable, "-m", "iir", "agent", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"{tmp_path}/models/Mistral-7B-Instruct-v0.3" in proc.stderr
    assert "local_mistral-7b-instruct-q4" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_agent_process_registers_and_deregisters_on_sigterm(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The real `iir agent` process with ROUTER_URL set registers with the real router; SIGTERM
    deregisters it (gone from the directory at once, not merely stale later)."""
    import asyncio

    from tests.agent.conftest import AGENT_TOKEN, LocalRouter, eventually

    router = await LocalRouter(tmp_path, timeout="60s").start()
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ROUTER_URL": router.url, "IIR_AGENT_TOKEN": AGENT_TOKEN,
           "IIR_HEARTBEAT_INTERVAL": "0.5"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iir.agent", "--model", str(tiny_model_dir), "--device", "cpu", "--port", str(port),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async def registered() -> bool:
            assert proc.returncode is None, "agent exited"
            return router.live_agents() == [f"agents/127.0.0.1:{port}"]

        await eventually(registered, timeout=300, every=0.2)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        from iir.server.agents_api import AGENTS

        assert router.app is not None and router.app[AGENTS].snapshot().entries == ()
        out = (await proc.stdout.read()).decode() if proc.stdout else ""
        assert "Traceback" not in out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await router.stop()
