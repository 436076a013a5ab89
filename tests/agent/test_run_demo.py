"""`iir run-demo` (what `make run` calls): demo agent + router as processes, a real answer, clean stop.

In the default suite (about 15 s: two Python processes start), so `make test` proves `make run` serves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from iir.agent.demo_model import DEMO_ANSWER
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(900)
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stop", ["ctrl-c", "hangup"])
def test_run_demo_serves_a_real_answer_and_stops_both(tiny_model_dir: Path, tmp_path: Path, stop: str) -> None:
    """Ctrl-C to run-demo, or a hangup (terminal closed: SIGHUP to the whole process group, which
    the router alone would take as "reload") stops the agent and the router, exit 0."""
    agent_port, router_port = free_port(), free_port()
    spec = (REPO / "iir.yaml").read_text()
    spec = spec.replace("127.0.0.1:5000", f"127.0.0.1:{agent_port}").replace(
        "listen: 127.0.0.1:8000", f"listen: 127.0.0.1:{router_port}").replace(
        "${SQLITE_DB_PATH:-iir.db}", str(tmp_path / "iir.db"))
    (tmp_path / "iir.yaml").write_text(spec)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for var in ("ROUTER_URL", "EXTERNAL_OPENAI_KEY", "IIR_AGENT_TOKEN"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-m", "iir", "run-demo", "--spec", str(tmp_path / "iir.yaml")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
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
        if stop == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGHUP)
        assert proc.wait(timeout=60) == 0
        for port in (agent_port, router_port):
            with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # an orphaned child (the bug this guards)
            os.killpg(proc.pid, signal.SIGKILL)
