"""The mock upstream: Debian nginx serving canned OpenAI responses from static files.

nginx runs unprivileged in the foreground (``daemon off``) from a generated configuration in
a temporary directory, on a free loopback port, in its own process, so the upstream costs
the router nothing and answers as fast as the machine allows.

Two paths, one per response shape (nginx cannot look inside a POST body cheaply, so the
shape is chosen by the URL and the benchmark spec points one backend at each):

- ``/json/v1/chat/completions``: a canned ``chat.completion`` JSON object;
- ``/sse/v1/chat/completions``: an SSE stream of :data:`SSE_CHUNKS` ``chat.completion.chunk``
  events and ``data: [DONE]``, ``Content-Type: text/event-stream``.

nginx's static module refuses POST with 405; ``error_page 405 =200 $uri`` turns that into an
internal GET of the same file, the usual way to let static nginx answer POSTs. A static file
is written in one go, so the SSE chunks reach the router in one or two TCP reads rather than
spaced out in time: right for CPU and throughput figures, not for relay timing (the relay
timing check uses its own trickling upstream, see :mod:`benchmarks.ttfb`).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = [
    "JSON_PATH",
    "SSE_CHUNKS",
    "SSE_PATH",
    "MockUpstream",
    "chat_completion_body",
    "free_port",
    "nginx_binary",
    "nginx_conf",
    "sse_body",
    "start_mock",
    "wait_port",
]

JSON_PATH = "/json/v1/chat/completions"
SSE_PATH = "/sse/v1/chat/completions"
SSE_CHUNKS = 20
_CREATED = 1_700_000_000
_WORDS = ("Hello", " from", " the", " mock", " upstream", ",", " a", " fast", " nginx", " serving",
          " canned", " chunks", " for", " the", " iir", " benchmark", " harness", ".")


def chat_completion_body(model: str = "bench-json") -> bytes:
    """A complete non-streaming OpenAI ``chat.completion`` response."""
    return orjson.dumps({
        "id": "chatcmpl-bench0001", "object": "chat.completion", "created": _CREATED, "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(_WORDS)},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": len(_WORDS), "total_tokens": 12 + len(_WORDS)},
    })


def _chunk(model: str, delta: dict[str, str], finish: str | None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-bench0002", "object": "chat.completion.chunk", "created": _CREATED, "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }) + b"\n\n"


def sse_body(model: str = "bench-sse", chunks: int = SSE_CHUNKS) -> bytes:
    """An SSE stream of ``chunks`` chat.completion.chunk events then ``data: [DONE]``.

    The first chunk carries the role, the last the finish reason, the ones between a word each.
    """
    if chunks < 2:
        raise ValueError("an SSE stream needs at least 2 chunks (role and finish)")
    words = [_WORDS[i % len(_WORDS)] for i in range(chunks - 2)]
    parts = [_chunk(model, {"role": "assistant", "content": ""}, None)]
    parts += [_chunk(model, {"content": w}, None) for w in words]
    parts.append(_chunk(model, {}, "stop"))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


def nginx_binary() -> str | None:
    """Path of the nginx executable (Debian installs it in /usr/sbin), or None."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None)


def nginx_conf(workdir: Path, port: int, workers: int = 1) -> str:
    """The nginx configuration for a mock in ``workdir`` listening on 127.0.0.1:``port``."""
    d = workdir.resolve()
    temps = "\n".join(f"  {k}_temp_path {d}/tmp/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# generated by benchmarks/mock_upstream.py
daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  sendfile on;
  tcp_nodelay on;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_max_body_size 16m;
  client_body_buffer_size 64k;
{temps}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    root {d}/www;
    error_page 405 =200 $uri;
    location = {JSON_PATH} {{ default_type application/json; }}
    location = {SSE_PATH} {{ default_type text/event-stream; add_header Cache-Control no-cache; }}
    location = /health {{ default_type text/plain; return 200 "ok\\n"; }}
    location = /nginx_status {{ stub_status; }}
    location / {{ return 404; }}
  }}
}}
"""


def write_site(workdir: Path, port: int, workers: int = 1) -> Path:
    """Write the conf, the canned bodies and the temp dirs into ``workdir``; returns the conf path."""
    for sub in ("www/json/v1/chat", "www/sse/v1/chat", *(f"tmp/{k}" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    (workdir / "www" / JSON_PATH.lstrip("/")).write_bytes(chat_completion_body())
    (workdir / "www" / SSE_PATH.lstrip("/")).write_bytes(sse_body())
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, workers))
    # Started as root, nginx drops its workers to `nobody`: let them read the site and use the temp dirs.
    workdir.chmod(0o755)
    for path in workdir.rglob("*"):
        path.chmod(0o1777 if path.is_dir() and "tmp" in path.parts else 0o755 if path.is_dir() else 0o644)
    return conf


@dataclass
class MockUpstream:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    def accepted_connections(self) -> int:
        """Connections nginx has accepted so far (stub_status), to tell connection reuse."""
        return nginx_accepted(self.port)


def nginx_accepted(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/nginx_status", timeout=5) as r:
        lines = r.read().decode().splitlines()
    # "Active connections: N" / "server accepts handled requests" / " A H R" / "Reading: ..."
    return int(lines[2].split()[0])


@contextlib.contextmanager
def start_mock(workers: int = 1, keep_dir: bool = False) -> Iterator[MockUpstream]:
    """Run an nginx mock for the duration of the ``with`` block; stops it (and cleans up) after."""
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx not found: install it (`apt-get install -y --no-install-recommends nginx-light`)")
    workdir = Path(tempfile.mkdtemp(prefix="iir-bench-nginx-"))
    port = free_port()
    conf = write_site(workdir, port, workers)
    proc = subprocess.Popen([binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        try:
            wait_port(port, proc=proc)
        except (RuntimeError, TimeoutError) as e:
            err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None and proc.stderr else ""
            raise RuntimeError(f"nginx mock failed to start: {e}\n{err}") from None
        yield MockUpstream(port, proc, workdir)
    finally:
        proc.terminate()  # SIGTERM: fast shutdown of master and workers
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()
        if not keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)
