"""Drive load with wrk (Debian's ``wrk``) and read its results as JSON.

wrk is given a generated Lua script that POSTs a fixed chat request and, in its ``done()``
handler, prints one line ``WRK_JSON {...}`` with the request count, errors and latency
percentiles in microseconds; :func:`parse_wrk_output` reads that line back.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["WrkResult", "chat_request_body", "lua_script", "parse_wrk_output", "run_wrk", "wrk_binary"]

MARKER = "WRK_JSON "


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def chat_request_body(model: str, stream: bool = False, temperature: float | None = 0.7) -> bytes:
    """A typical small chat request (system + user message, ~330 bytes)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly and precisely."},
            {"role": "user", "content": "Summarise in one sentence why a proxy should add as little latency "
                                        "as possible to every request it forwards upstream."},
        ],
        "max_tokens": 64,
        "stream": stream,
    }
    if temperature is not None:
        body["temperature"] = temperature
    return orjson.dumps(body)


def _lua_long_string(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def lua_script(body: bytes, headers: dict[str, str] | None = None) -> str:
    """wrk script: POST ``body`` with ``headers``; ``done()`` prints the results as one JSON line."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_long_string(body.decode())}"]
    lines += [f"wrk.headers[ {_lua_long_string(k)} ] = {_lua_long_string(v)}" for k, v in hdrs.items()]
    lines.append(r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    "MARKER", summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
""".replace('"MARKER"', f'"{MARKER}"'))
    return "\n".join(lines)


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    errors: dict[str, int]
    latency_ms: dict[str, float]  # min mean stdev max p50 p90 p99 p999
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rps"] = round(self.rps, 1)
        return d


def parse_wrk_output(stdout: str) -> WrkResult:
    """The :class:`WrkResult` from wrk's output with our ``done()`` line; ValueError if absent."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            raw = orjson.loads(line[len(MARKER):])
            lat = {k: round(v / 1000.0, 3) for k, v in raw["latency_us"].items()}
            return WrkResult(raw["requests"], raw["duration_us"] / 1e6, raw["bytes"], raw["errors"], lat)
    raise ValueError(f"no {MARKER.strip()} line in wrk output:\n{stdout[-2000:]}")


def run_wrk(url: str, body: bytes, *, connections: int, duration: float, threads: int = 1,
            headers: dict[str, str] | None = None, timeout: float = 10.0) -> WrkResult:
    """Run wrk against ``url`` for ``duration`` seconds at ``connections`` concurrent connections."""
    binary = wrk_binary()
    if binary is None:
        raise FileNotFoundError("wrk not found: install it (`apt-get install -y --no-install-recommends wrk`)")
    threads = max(1, min(threads, connections))
    with tempfile.TemporaryDirectory(prefix="iir-bench-wrk-") as d:
        script = Path(d) / "post.lua"
        script.write_text(lua_script(body, headers))
        cmd = [binary, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
               "--timeout", f"{int(timeout)}s", "-s", str(script), url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout + 30, check=False)
    if proc.returncode != 0 or MARKER not in proc.stdout:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    return parse_wrk_output(proc.stdout)
