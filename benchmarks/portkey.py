"""Portkey's open-source gateway (npm ``@portkey-ai/gateway``), side by side with iir.

Installed with npm into ``.cache/portkey`` (gitignored) on first use, pinned; run with Node as
``node build/start-server.js --port=P --headless``. Each request names the upstream with
Portkey's own headers (``x-portkey-provider: openai``, ``x-portkey-custom-host: <mock>/json/v1``),
so it forwards to the same nginx mock as iir.

Known: with Node 20 (Debian's), Portkey 1.15.2 answers every *streaming* request with 500
("TypeError: immutable" appending headers to the upstream fetch Response); its non-streaming
path works. The harness records that instead of a number.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from benchmarks.mock_upstream import free_port, wait_port
from benchmarks.targets import REPO, Proc, stop

__all__ = ["PORTKEY_VERSION", "ensure_portkey", "portkey_headers", "start_portkey"]

PORTKEY_VERSION = "1.15.2"
_DIR = REPO / ".cache" / "portkey"
_ENTRY = Path("node_modules/@portkey-ai/gateway/build/start-server.js")


def ensure_portkey(timeout: float = 300.0) -> tuple[Path | None, str]:
    """(path of start-server.js, note). Installs the pinned package with npm if needed."""
    entry = _DIR / _ENTRY
    if entry.is_file():
        return entry, f"@portkey-ai/gateway {PORTKEY_VERSION} (cached in {_DIR.relative_to(REPO)})"
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        return None, "not measured: node/npm not installed"
    _DIR.mkdir(parents=True, exist_ok=True)
    (_DIR / "package.json").write_text('{"name": "iir-bench-portkey", "private": true}\n')
    try:
        proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
                               f"@portkey-ai/gateway@{PORTKEY_VERSION}"], cwd=_DIR, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"not measured: npm install did not finish in {timeout:.0f} s (offline?)"
    if proc.returncode != 0 or not entry.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return None, "not measured: npm install failed: " + " | ".join(tail)
    return entry, f"@portkey-ai/gateway {PORTKEY_VERSION} (installed with npm into {_DIR.relative_to(REPO)})"


def portkey_headers(upstream_base: str) -> dict[str, str]:
    """Headers telling Portkey to forward to ``upstream_base`` (an OpenAI-style base URL)."""
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream_base,
            "Authorization": "Bearer sk-bench-not-a-real-key"}


@contextlib.contextmanager
def start_portkey(entry: Path, log: Path) -> Iterator[Proc]:
    node = shutil.which("node")
    if node is None:
        raise FileNotFoundError("node not found")
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([node, str(entry), f"--port={port}", "--headless"], cwd=entry.parent,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, timeout=60, proc=proc)
        yield Proc(port, proc, log)
    finally:
        stop(proc)
