"""``--workers N``: a supervising parent runs N worker processes sharing one port.

Each worker is ``iir serve --worker`` bound with SO_REUSEPORT (the kernel spreads
connections), loads the spec and reloads it on its own (watcher, SIGHUP). The parent
forwards SIGTERM/SIGINT/SIGHUP to every worker, waits for their drain, and exits 0 when all
exited cleanly. A worker that dies unexpectedly is restarted (at most once per second).

A second Ctrl-C (the same stop signal again, more than :data:`FORCE_AFTER` seconds after the
first) does not wait for the drain: the supervisor kills its workers and exits 130. A repeat
within that window is the same Ctrl-C arriving twice (a worker gets it from the terminal's
process group and forwarded by its parent) and is ignored, so it never skips a drain.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["FORCE_AFTER", "StopSignals", "supervise"]

log = logging.getLogger("iir.workers")

FORCE_AFTER = 1.0  # seconds: a repeat within this is one Ctrl-C delivered twice, not a second one


class StopSignals:
    """The stop signals a process received: the first one asks for a graceful drain; the same
    signal again more than :data:`FORCE_AFTER` s later asks to stop now (a second Ctrl-C)."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.at = 0.0

    def forces(self, signum: int) -> bool:
        """Note ``signum``; True when it is a second Ctrl-C (or second SIGTERM) that forces exit."""
        now = time.monotonic()
        if self.first is None:
            self.first, self.at = signum, now
            return False
        return signum == self.first and now - self.at > FORCE_AFTER


def _spawn(spec: Path, host: str, port: int, index: int, workers: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "iir", "serve", "--spec", str(spec), "--host", host, "--port", str(port),
           "--workers", str(workers), "--worker"]  # --workers: what the worker's startup log reports
    env = dict(os.environ, IIR_WORKER_INDEX=str(index))
    return subprocess.Popen(cmd, env=env)


def supervise(spec: Path, host: str, port: int, workers: int, drain_timeout: float,
              on_exit: Callable[[int], None] | None = None) -> int:
    """Run ``workers`` processes until SIGTERM/SIGINT; returns the exit status (130 when a second
    Ctrl-C cut the drain short)."""
    procs = [_spawn(spec, host, port, i, workers) for i in range(workers)]
    log.info("iir supervisor pid %d: %d workers on %s:%d (pids %s)", os.getpid(), workers, host, port,
             " ".join(str(p.pid) for p in procs))
    stopping: list[int] = []
    signals = StopSignals()
    forced: list[bool] = []

    def forward(signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if signals.forces(signum):
                if not forced:
                    forced.append(True)
                    log.warning("second %s during the drain: killing the workers now (in-flight requests "
                                "are cut off)", signal.Signals(signum).name)
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                return
            stopping.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    last_restart = 0.0
    while not stopping:
        time.sleep(0.2)
        for i, p in enumerate(procs):
            if p.poll() is not None and not stopping and time.monotonic() - last_restart > 1.0:
                log.error("worker %d (pid %d) exited with %s; restarting", i, p.pid, p.returncode)
                if on_exit is not None:
                    on_exit(p.pid)
                procs[i] = _spawn(spec, host, port, i, workers)
                last_restart = time.monotonic()
    deadline = time.monotonic() + drain_timeout + 5
    status = 0
    for p in procs:
        try:
            rc = p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        status = status or (0 if rc in (0, -signal.SIGTERM, -signal.SIGINT) else 1)
        if on_exit is not None:
            on_exit(p.pid)
    return 130 if forced else status
