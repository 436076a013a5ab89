"""Shared test fixtures: free ports, a real redis-server per session, spec helpers.

Tests that need Redis use the ``redis_url`` fixture. Without a redis-server binary they
skip locally, but fail in CI (``IIR_REQUIRE_REDIS=1``, set by .ci/run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A private redis-server on a free loopback port for the whole session; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("IIR_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is required (IIR_REQUIRE_REDIS=1) but not installed")
        pytest.skip("redis-server not installed (set IIR_REQUIRE_REDIS=1 to make this a failure)")
    workdir = tempfile.mkdtemp(prefix="iir-redis-")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session Redis, flushed before each test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write a spec text into a temporary iir.yaml and return its path."""

    def _write(text: str, name: str = "iir.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write
