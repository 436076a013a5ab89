"""Run the real ``iir serve`` as a subprocess for tests, and stop it cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[2]


def serve(spec: Path, port: int, tmp_path: Path, env: Mapping[str, str], workers: int = 1) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    full.update(env, PYTHONPATH=str(REPO), SQLITE_DB_PATH=str(tmp_path / "iir.db"), TMPDIR=str(tmp_path))
    return subprocess.Popen([sys.executable, "-m", "iir", "serve", "--spec", str(spec), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers)],
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)


async def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 90, workers: int = 1) -> list[str]:
    """Wait until every worker logged its ``startup`` event and /healthz answers; returns the
    stdout lines read meanwhile (prepend them to what :func:`stop` returns)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    started = 0
    while started < workers and proc.stdout is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"only {started} of {workers} workers started")
        line = (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), remaining)).decode()
        if not line:
            pytest.fail(f"iir serve exited during start-up: {proc.stderr.read().decode() if proc.stderr else ''}")
        lines.append(line)
        started += '"event":"startup"' in line
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"iir serve exited during start-up: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                async with s.get(f"{base}/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        else:
            pytest.fail("iir serve did not become ready")
    return lines


def stop(proc: subprocess.Popen[bytes]) -> tuple[str, str]:
    """SIGTERM, wait for the drain; returns (stdout, stderr)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
