"""Processes under test: the iir router (``python -m iir serve``) and the trickling upstream.

The router runs exactly as in production: ``iir serve --spec FILE`` with the spec's defaults
(logging at info as JSON lines, metrics on); its stdout and stderr go to a log file, as a
service manager would redirect them. Everything listens on free loopback ports and is stopped
(SIGTERM, then SIGKILL) when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.mock_upstream import free_port, wait_port
from benchmarks.procstat import descendants

__all__ = ["Proc", "start_floor", "start_router", "start_trickle", "stop"]

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Proc:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL the process and any descendant still alive."""
    if proc.poll() is None:
        kids = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def _wait_ready(port: int, proc: subprocess.Popen[bytes], workers: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the router exited with {proc.returncode} while starting; its log:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        if _get(f"http://127.0.0.1:{port}/readyz") == 200 and (workers <= 1 or len(descendants(proc.pid)) >= workers):
            # With several workers, /readyz answers as soon as one listens: give the others a
            # moment, then make sure every one answers (SO_REUSEPORT spreads new connections).
            if workers > 1:
                time.sleep(2.0)
                if sum(_get(f"http://127.0.0.1:{port}/readyz") == 200 for _ in range(8 * workers)) < 8 * workers:
                    continue
            return
        time.sleep(0.1)
    raise TimeoutError(f"the router was not ready within {timeout:.0f} s; its log:\n"
                       f"{log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def start_router(spec_text: str, workdir: Path, port: int, workers: int = 1,
                 timeout: float = 90.0, env: dict[str, str] | None = None, src: Path = REPO) -> Iterator[Proc]:
    """``python -m iir serve --spec <workdir>/iir-bench-wN.yaml --port P --workers N``, with the
    ``iir`` package imported from ``src`` (default: this checkout; another directory holding an
    ``iir/`` package gives an A/B comparison of a change)."""
    spec = workdir / f"iir-bench-w{workers}.yaml"
    spec.write_text(spec_text)
    log = workdir / f"router-w{workers}.log"
    full_env = {**os.environ, **(env or {})}
    for name in ("LOG_LEVEL", "CACHE_TTL", "REDIS_URL"):  # production defaults come from the spec
        if env is None or name not in env:
            full_env.pop(name, None)
    full_env["SQLITE_DB_PATH"] = str(workdir / f"iir-bench-w{workers}.db")
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), full_env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "iir", "serve", "--spec", str(spec), "--port", str(port), "--workers", str(workers)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=src, env=full_env,
                                start_new_session=True)
    try:
        _wait_ready(port, proc, workers, log, timeout)
        yield Proc(port, proc, log)
    finally:
        stop(proc)


@contextlib.contextmanager
def start_trickle(chunks: int, gap_ms: float, lifetime: float = 1800.0) -> Iterator[Proc]:
    """The trickling SSE upstream of :mod:`benchmarks.ttfb`, in its own process."""
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.ttfb", "trickle", "--port", str(port), "--chunks", str(chunks),
           "--gap-ms", str(gap_ms), "--lifetime", str(lifetime)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_port(port, proc=proc)
        yield Proc(port, proc)
    finally:
        stop(proc)


@contextlib.contextmanager
def start_floor(upstream: str) -> Iterator[Proc]:
    """The bare aiohttp proxy of :mod:`benchmarks.floor_proxy`, in its own process."""
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.floor_proxy", "--port", str(port), "--upstream", upstream]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_port(port, timeout=30, proc=proc)
        yield Proc(port, proc)
    finally:
        stop(proc)
