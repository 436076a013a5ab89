"""`iir serve` as a real process: --workers 2 shares one port and every worker reloads;
SIGHUP reloads; SIGTERM drains in-flight requests and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import free_port

SPEC = """version: 1
server: {{drain_timeout: 10s}}
state: {{registry: "{registry}"}}
backends:
  a: {{kind: openai-compatible, url: "{a}", models: [m]}}
  b: {{kind: openai-compatible, url: "{b}", models: [m]}}
routes:
  - name: main
    match: {{model: m}}
    to: [{target}]
"""
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _spawn(spec: Path, port: int, workers: int, *, group: bool = False) -> subprocess.Popen[bytes]:
    """``group``: in its own process group (like a terminal's foreground job) for os.killpg."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
    return subprocess.Popen([sys.executable, "-m", "iir", "serve", "--spec", str(spec), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=spec.parent,
                            start_new_session=group)


async def _ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                async with s.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("router did not start")


async def _fresh(url: str, method: str, path: str, **kw) -> tuple[int, dict, dict]:
    """One request on a new connection (so SO_REUSEPORT may pick another worker)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s, \
            s.request(method, url + path, **kw) as r:
        return r.status, dict(r.headers), await r.json()


async def _wait_admin(url: str, ok, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, body = await _fresh(url, "GET", "/admin/")
        if body["last_reload"] and ok(body["last_reload"]):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"admin never showed the expected reload: {body['last_reload']}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


async def test_two_workers_serve_one_port_and_both_reload(upstreams, tmp_path):
    a, b = await upstreams(), await upstreams()
    spec = tmp_path / "iir.yaml"

    def write(target: str) -> None:
        tmp = tmp_path / "next.yaml"
        tmp.write_text(SPEC.format(registry=tmp_path / "reg.db", a=a.url, b=b.url, target=target))
        tmp.replace(spec)

    write("a")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn(spec, port, 2)
    try:
        await _ready(url, proc)
        pids = set()
        deadline = time.monotonic() + 40  # the second worker may still be starting
        while len(pids) < 2 and time.monotonic() < deadline:
            _, _, body = await _fresh(url, "GET", "/admin/")
            pids.add(body["pid"])
            await asyncio.sleep(0.01)
        assert len(pids) == 2, "both workers should accept connections on the shared port"
        assert proc.pid not in pids  # the parent supervises, workers serve
        write("b")
        digests: dict[int, str] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(digests) < 2 or
                                               any(d["last_reload"] is None for d in digests.values())):
            _, _, body = await _fresh(url, "GET", "/admin/")
            digests[body["pid"]] = body
            await asyncio.sleep(0.02)
        assert set(digests) == pids
        assert all(d["last_reload"] and d["last_reload"]["ok"] and d["last_reload"]["changed"]
                   for d in digests.values()), digests
        assert len({d["spec"]["digest"] for d in digests.values()}) == 1
        for _ in range(10):
            status, headers, _ = await _fresh(url, "POST", "/v1/chat/completions", json=CHAT)
            assert status == 200 and headers["x-iir-backend"] == "b"
    finally:
        rc = _stop(proc)
    assert rc == 0
    # each worker's startup log tells the real worker count (--workers 2; the spec says nothing,
    # so server.workers is 1) and its own index
    assert proc.stdout is not None
    startups = [orjson.loads(line) for line in proc.stdout.read().splitlines() if b'"event":"startup"' in line]
    assert sorted((e["workers"], e["worker"]) for e in startups) == [(2, 0), (2, 1)], startups


async def test_sighup_reloads_and_sigterm_drains_in_flight(upstreams, tmp_path):
    a = await upstreams()
    b = await upstreams()
    spec = tmp_path / "iir.yaml"
    spec.write_text(SPEC.format(registry=tmp_path / "reg.db", a=a.url, b=b.url, target="a"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn(spec, port, 1)
    try:
        await _ready(url, proc)
        spec.write_text(spec.read_text().replace("to: [a]", "to: [b]"))
        body = await _wait_admin(url, lambda r: r["ok"] and r["changed"])  # the watcher applies it
        proc.send_signal(signal.SIGHUP)
        body = await _wait_admin(url, lambda r: r["trigger"] == "sighup")
        assert body["last_reload"]["ok"] and not body["last_reload"]["changed"]
        b.mode = "delay"  # answers after 1 s: in flight when SIGTERM arrives
        pending = asyncio.create_task(_fresh(url, "POST", "/v1/chat/completions", json=CHAT))
        while not b.requests:
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        status, headers, body = await pending
        assert status == 200 and headers["x-iir-backend"] == "b"
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_ctrl_c_during_the_drain_exits_at_once(upstreams, tmp_path, workers):
    """Ctrl-C goes to the terminal's whole process group: with --workers each worker gets it twice
    within milliseconds (the group, and forwarded by the supervisor), which must not count as a
    second Ctrl-C. The first starts the drain, held open by a request to an upstream that does not
    answer (drain_timeout 60 s); a second Ctrl-C 1.5 s later exits 130 at once, without a traceback."""
    a = await upstreams()
    a.mode = "hang"
    spec = tmp_path / "iir.yaml"
    spec.write_text(SPEC.format(registry=tmp_path / "reg.db", a=a.url, b=a.url, target="a")
                    .replace("drain_timeout: 10s", "drain_timeout: 60s"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn(spec, port, workers, group=True)
    pending = None
    try:
        await _ready(url, proc)
        pending = asyncio.create_task(_fresh(url, "POST", "/v1/chat/completions", json=CHAT))
        while not a.requests:
            await asyncio.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        await asyncio.sleep(1.5)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""  # still draining
        os.killpg(proc.pid, signal.SIGINT)
        rc = await asyncio.to_thread(proc.wait, 20)  # well before the 60 s drain_timeout
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert rc == 130, out
        assert "second SIGINT during the drain" in out and "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


def test_workers_refuse_a_port_already_in_use(tmp_path):
    """A router already listening with SO_REUSEPORT (as every worker does): a second
    `iir serve --workers 2` must not join its group and split the traffic, and must not
    restart failing workers forever: it says why and exits 1."""
    spec = tmp_path / "iir.yaml"
    spec.write_text(SPEC.format(registry=tmp_path / "r.db", a="http://127.0.0.1:9/v1", b="http://127.0.0.1:9/v1",
                                target="a"))
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        proc = _spawn(spec, held.getsockname()[1], 2)
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                _stop(proc)
    assert proc.returncode == 1
    text = out.decode()
    assert "cannot listen on 127.0.0.1:" in text and "another router" in text
    assert "restarting" not in text and "Traceback" not in text

