"""With several worker processes, /metrics (answered by any one of them) counts every worker's
requests: prometheus multiprocess mode through metrics_api.multiprocess_dir_for_workers()."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from iir.server import metrics_api
from tests.conftest import free_port

from .promtext import value
from .serving import serve, stop, wait_ready
from .test_router_traffic import ENV, KEY_CI, MESSAGES, write_spec
from .upstream import USAGE, upstream

WORKER = Path(__file__).with_name("multiworker_app.py")
REPO = Path(__file__).resolve().parents[2]


def _start_workers(n: int, port: int) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(port)], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(n)]
    for p in procs:
        line = p.stdout.readline() if p.stdout else ""
        assert line.startswith("ready"), f"worker did not start: {line!r}"
    return procs


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


async def test_two_workers_totals_equal_requests_sent() -> None:
    sent = 40
    port = free_port()
    with metrics_api.multiprocess_dir_for_workers() as mpdir:
        assert os.environ[metrics_api.ENV_VAR] == mpdir
        procs = _start_workers(2, port)
        try:
            base = f"http://127.0.0.1:{port}"
            pids: set[int] = set()
            timeout = aiohttp.ClientTimeout(total=10)
            # A fresh connection per request so the kernel spreads them over both workers.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                             timeout=timeout) as s:
                for _ in range(sent):
                    async with s.post(f"{base}/v1/chat/completions", json={}) as r:
                        assert r.status == 200
                        pids.add((await r.json())["pid"])
                assert pids == {p.pid for p in procs}, "the kernel sent every request to one worker"
                scrapes = [await (await s.get(f"{base}/metrics")).text() for _ in range(6)]
            for text in scrapes:  # whichever worker answered, the totals are the same
                assert value(text, "iir_requests_total", model="tiny", route="tiny-route",
                             backend="local-a", status="200") == sent
                assert value(text, "iir_request_duration_seconds_count") == sent
                assert value(text, "iir_requests_in_flight") == 0
                assert value(text, "iir_spec_info") == 1
            assert any(f.startswith("counter_") for f in os.listdir(mpdir))
            # A worker that exits: its counts stay, its live gauges leave the merge.
            dead = procs[0]
            dead.terminate()
            dead.wait(timeout=10)
            metrics_api.worker_exited(dead.pid)
            assert not any(f.endswith(f"_{dead.pid}.db") and f.startswith("gauge_live") for f in os.listdir(mpdir))
            async with aiohttp.ClientSession(timeout=timeout) as s:
                text = await (await s.get(f"{base}/metrics")).text()
            assert value(text, "iir_requests_total") == sent
        finally:
            _stop(procs)
    assert not os.path.exists(mpdir)
    assert metrics_api.ENV_VAR not in os.environ


async def test_iir_serve_two_workers_totals_equal_requests_sent(tmp_path: Path) -> None:
    """The real ``iir serve --workers 2``: both workers serve, any scrape counts all requests."""
    sent = 30
    async with upstream() as up:
        spec = write_spec(tmp_path, up.url)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = serve(spec, port, tmp_path, ENV, workers=2)
        head: list[str] = []
        try:
            head = await wait_ready(base, proc, workers=2)
            headers = {"Authorization": f"Bearer {KEY_CI}"}
            body = {"model": "tiny", "messages": MESSAGES}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                             timeout=aiohttp.ClientTimeout(total=20)) as s:
                for _ in range(sent):
                    async with s.post(f"{base}/v1/chat/completions", json=body, headers=headers) as r:
                        assert r.status == 200, await r.text()
                scrapes = [await (await s.get(f"{base}/metrics")).text() for _ in range(6)]
            (mpdir,) = tmp_path.glob("iir-metrics-*")  # the run's PROMETHEUS_MULTIPROC_DIR
            writers = {f.name.rsplit("_", 1)[1] for f in mpdir.glob("counter_*.db")}
            assert len(writers) == 2, "both workers must have served requests"
            for text in scrapes:
                assert value(text, "iir_requests_total", model="tiny", route="direct", backend="good",
                             status="200") == sent
                assert value(text, "iir_request_duration_seconds_count") == sent
                assert value(text, "iir_tokens_total", type="prompt") == sent * USAGE["prompt_tokens"]
                assert value(text, "iir_requests_in_flight") == 0
                assert value(text, "iir_config_reloads_total", result="success") == 2  # one load per worker
        finally:
            out, err = stop(proc)
            out = "".join(head) + out
    assert proc.returncode == 0, err
    assert up.calls["good"] == sent
    assert not list(tmp_path.glob("iir-metrics-*")), "the multiprocess directory is removed on exit"
    assert sum(1 for line in out.splitlines() if '"event":"request"' in line) == sent
