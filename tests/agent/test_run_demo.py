"""`iir run-demo` (what `make run` calls): demo agent + router as processes, a real answer, clean stop.

In the default suite (about 15 s: two Python processes start), so `make test` proves `make run` serves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from iir.agent.demo_model import DEMO_ANSWER
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(900)
REPO = Path(__file__).resolve().parents[2]


def _silent_upstream() -> socket.socket:
    """A loopback 'backend' that accepts connections and never answers (holds a drain open)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return server


def _post_in_background(url: str, model: str) -> None:
    def post() -> None:
        request = urllib.request.Request(url, data=json.dumps({"model": model, "messages": [
            {"role": "user", "content": "Hi!"}]}).encode(), headers={"Content-Type": "application/json"})
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=120):
            pass

    threading.Thread(target=post, daemon=True).start()


@pytest.mark.parametrize("stop", ["ctrl-c", "hangup", "ctrl-c-twice"])
def test_run_demo_serves_a_real_answer_and_stops_both(tiny_model_dir: Path, tmp_path: Path, stop: str) -> None:
    """Ctrl-C to run-demo, or a hangup (terminal closed: SIGHUP to the whole process group, which
    the router alone would take as "reload") stops the agent and the router, exit 0.

    ctrl-c-twice: Ctrl-C to the process group (run-demo and both children get it; the router also
    gets run-demo's SIGTERM) while a request to a silent backend holds the router's drain open;
    a second Ctrl-C 1.5 s later kills both at once, exit 130."""
    agent_port, router_port = free_port(), free_port()
    silent = _silent_upstream()
    spec = (REPO / "iir.yaml").read_text()
    spec = spec.replace("127.0.0.1:5000", f"127.0.0.1:{agent_port}").replace(
        "listen: 127.0.0.1:8000", f"listen: 127.0.0.1:{router_port}").replace(
        "${SQLITE_DB_PATH:-iir.db}", str(tmp_path / "iir.db")).replace(
        "\nagents:", f"\n  silent: {{kind: openai-compatible, url: 'http://127.0.0.1:{silent.getsockname()[1]}/v1', "
        "models: [silent-model]}\nagents:", 1)
    assert "silent-model" in spec
    (tmp_path / "iir.yaml").write_text(spec)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for var in ("ROUTER_URL", "EXTERNAL_OPENAI_KEY", "IIR_AGENT_TOKEN"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-m", "iir", "run-demo", "--spec", str(tmp_path / "iir.yaml")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as in a terminal
    lines: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "iir demo is up" in line:
                up.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert up.wait(600), "".join(lines)
        time.sleep(0.5)  # the rest of the banner
        assert f"http://127.0.0.1:{router_port}/v1/chat/completions" in "".join(lines)  # the curl example
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{router_port}/v1", api_key="unused", max_retries=0)
        for model in ("tiny-demo", "auto"):
            chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi!"}],
                                                  temperature=0)
            assert chat.choices[0].message.content == DEMO_ANSWER
        if stop == "ctrl-c-twice":
            _post_in_background(f"http://127.0.0.1:{router_port}/v1/chat/completions", "silent-model")
            time.sleep(1.0)  # the request reaches the silent backend
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(1.5)
            assert proc.poll() is None  # run-demo waits for the router's drain
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=10) == 130  # not after the router's 30 s drain or run-demo's 15 s wait
            time.sleep(0.3)  # the reader thread drains the pipe
            assert "second Ctrl-C" in "".join(lines) and "Traceback" not in "".join(lines)
        elif stop == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGHUP)
        if stop != "ctrl-c-twice":
            assert proc.wait(timeout=60) == 0
        for port in (agent_port, router_port):
            with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
    finally:
        silent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # an orphaned child (the bug this guards)
            os.killpg(proc.pid, signal.SIGKILL)
