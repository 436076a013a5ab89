"""``make bench``: the router under load, against the same upstream called directly.

    python -m benchmarks.run [--quick] [--duration S] [--concurrency 1,8,64] [--workers 1,2]
                             [--no-portkey] [--no-micro] [--out benchmarks/results]

An nginx mock upstream (canned chat JSON and a 20-chunk SSE stream) runs in its own process,
wrk drives the load in its own process, and the router runs as in production
(``python -m iir serve``, logging and metrics on, log to a file). For every scenario (target
x response shape x concurrency) wrk runs a warm-up and then a fixed-duration measured run;
around the measured run the CPU time of the target's process tree is read from /proc.

Prints a table (requests/s, p50/p90/p99, CPU ms per request, RSS, ratios to direct), the
verdict on each target of issue #9, and writes everything as JSON to
``benchmarks/results/<UTC timestamp>.json`` for comparison over time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from benchmarks import report
from benchmarks.mock_upstream import (
    JSON_PATH,
    SSE_CHUNKS,
    SSE_PATH,
    MockUpstream,
    free_port,
    nginx_binary,
    start_mock,
)
from benchmarks.procstat import idle_cpus, machine_ticks, tree_usage
from benchmarks.specs import CACHED_MODEL, JSON_MODEL, SSE_MODEL, TRICKLE_MODEL, bench_spec
from benchmarks.targets import REPO, Proc, start_floor, start_router, start_trickle
from benchmarks.ttfb import measure_relay, measure_ttfb
from benchmarks.wrk import chat_request_body, run_wrk, wrk_binary

__all__ = ["main"]

CHAT = "/v1/chat/completions"
# kind -> (model, stream, temperature): "cached" is deterministic (temperature 0) so it may be cached
KINDS: dict[str, tuple[str, bool, float | None]] = {
    "json": (JSON_MODEL, False, 0.7),
    "sse": (SSE_MODEL, True, 0.7),
    "cached": (CACHED_MODEL, False, 0.0),
}


def _version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (p.stdout + p.stderr).strip().splitlines()
    return out[0] if out else "?"


def _git_commit() -> str:
    return _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])


def calibrate() -> dict[str, float]:
    """How fast this machine is right now, for comparing runs across machines: a loopback TCP
    send+recv of 400 bytes and a pure-Python loop step (fastest of 5 batches each)."""
    import socket

    def best(fn: Any, n: int) -> float:
        out = []
        for _ in range(5):
            t = time.perf_counter()
            fn(n)
            out.append((time.perf_counter() - t) / n)
        return min(out)

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    peer, _ = srv.accept()
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * 400

    def tcp(n: int) -> None:
        for _ in range(n):
            cli.send(msg)
            peer.recv(65536)

    def loop(n: int) -> None:
        x = 0
        for i in range(n):
            x += i

    try:
        return {"tcp_send_recv_us": round(best(tcp, 2000) * 1e6, 2), "python_loop_ns": round(best(loop, 200_000) * 1e9, 2)}
    finally:
        for sock in (cli, peer, srv):
            sock.close()


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return int(r.status), {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), {k.lower(): v for k, v in e.headers.items()}, e.read()


def overhead_from_log(log: Path, offset: int) -> dict[str, Any] | None:
    """p50/p90 of ``overhead_ms`` (the router's own time, upstream waits excluded) over the
    ``request`` lines logged after ``offset``: the router's own view of its added latency."""
    values = []
    with log.open("rb") as f:
        f.seek(offset)
        for line in f:
            if b'"event":"request"' not in line:
                continue
            try:
                v = orjson.loads(line).get("overhead_ms")
            except orjson.JSONDecodeError:
                continue
            if isinstance(v, int | float):
                values.append(float(v))
    if len(values) < 2:
        return None
    values.sort()
    return {"n": len(values), "p50": round(values[len(values) // 2], 3), "p90": round(values[int(len(values) * 0.9)], 3)}


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.runs: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.mock: MockUpstream | None = None

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def scenario(self, target: str, workers: int, kind: str, url: str, pid_root: int,
                 headers: dict[str, str] | None = None, log: Path | None = None) -> None:
        model, stream, temperature = KINDS[kind]
        body = chat_request_body(model, stream, temperature)
        for c in self.args.concurrency:
            run_wrk(url, body, connections=c, duration=self.args.warmup, threads=self.args.wrk_threads, headers=headers)
            accepted = self.mock.accepted_connections() if self.mock else 0
            log_from = log.stat().st_size if log is not None else 0
            before, machine0 = tree_usage(pid_root), machine_ticks()
            res = run_wrk(url, body, connections=c, duration=self.args.duration, threads=self.args.wrk_threads,
                          headers=headers)
            after, machine1 = tree_usage(pid_root), machine_ticks()
            # new upstream connections during the run (the status request itself is one)
            opened = self.mock.accepted_connections() - accepted - 1 if self.mock else None
            cpu = after.cpu_s - before.cpu_s
            row = {"target": target, "workers": workers, "kind": kind, "concurrency": c, **res.to_dict(),
                   "cpu_s": round(cpu, 3),
                   "cpu_ms_per_req": round(cpu * 1000 / res.requests, 4) if res.requests else None,
                   "rss_mb": after.rss_mb, "pids": len(after.pids), "upstream_conns_opened": opened,
                   "idle_cpus": idle_cpus(machine0, machine1)}
            if log is not None:
                row["router_overhead_ms"] = overhead_from_log(log, log_from)
            self.runs.append(row)
            err = f"  ERRORS {res.errors}" if res.error_count else ""
            self.log(f"  {target:<9} {kind:<6} c={c:<3} {res.rps:>9.0f} req/s  p50 {res.latency_ms['p50']:>8.3f} ms  "
                     f"p99 {res.latency_ms['p99']:>8.3f} ms  CPU {row['cpu_ms_per_req'] or 0:.3f} ms/req  "
                     f"RSS {after.rss_mb} MB{err}")

    def check_response(self, target: str, url: str, kind: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """One request before the load: it must succeed with the expected shape."""
        model, stream, temperature = KINDS[kind]
        status, _hdrs, body = _post(url, chat_request_body(model, stream, temperature), headers)
        ok = status == 200 and (body.rstrip().endswith(b"data: [DONE]") if stream else body.startswith(b"{"))
        info: dict[str, Any] = {"target": target, "kind": kind, "status": status, "ok": ok}
        if kind == "cached":  # memory caches are per worker: a few tries reach a worker that stored it
            seen = [_post(url, chat_request_body(model, stream, temperature), headers)[1].get("x-iir-cache", "absent")
                    for _ in range(6)]
            info["cache_header"] = "hit" if "hit" in seen else seen[-1]
        if not ok:
            info["body"] = body[:300].decode(errors="replace")
        return info

    # -- the phases --------------------------------------------------------------------------

    def direct(self, mock: MockUpstream) -> None:
        self.log("direct to the nginx mock (CPU column: nginx's own)")
        for kind, path in (("json", JSON_PATH), ("sse", SSE_PATH)):
            self.scenario("direct", 0, kind, mock.base + path, mock.proc.pid)

    def floor(self, mock: MockUpstream) -> None:
        self.log("through the floor: a bare aiohttp pass-through proxy (benchmarks/floor_proxy.py)")
        with start_floor(mock.base) as fl:
            for kind in ("json", "sse"):
                check = self.check_response("floor", fl.base + CHAT, kind)
                if not check["ok"]:
                    raise RuntimeError(f"the floor proxy answered {check['status']}: {check.get('body')}")
                self.scenario("floor", 1, kind, fl.base + CHAT, fl.pid)

    def router(self, mock: MockUpstream, trickle: Proc | None, workers: int) -> dict[str, Any]:
        port = free_port()
        spec = bench_spec(mock.port, port, workers, self.workdir / f"reg-w{workers}.db",
                          trickle.port if trickle else None)
        extra: dict[str, Any] = {"workers": workers}
        self.log(f"through iir, {workers} worker(s)")
        with start_router(spec, self.workdir, port, workers, src=self.args.src) as r:
            checks = [self.check_response(f"iir-{workers}w", r.base + CHAT, k) for k in KINDS]
            extra["checks"] = checks
            for ch in checks:
                if not ch["ok"]:
                    raise RuntimeError(f"iir answered {ch['status']} for a {ch['kind']} request: {ch.get('body')}")
            cache_on = next(c for c in checks if c["kind"] == "cached").get("cache_header") == "hit"
            extra["cache_hits"] = cache_on
            if not cache_on:
                self.notes.append(f"cache ({workers} worker(s)): repeated identical deterministic requests were not "
                                  "hits (x-iir-cache absent or not 'hit'); the 'cached' rows are plain proxying")
            kinds = ["json", "sse", "cached"]
            for kind in kinds:
                self.scenario(f"iir-{workers}w", workers, kind, r.base + CHAT, r.pid, log=r.log)
            if workers == 1:
                extra.update(self.latency_checks(mock, trickle, r))
            extra["rss_mb_end"] = tree_usage(r.pid).rss_mb
            extra["log_bytes"] = r.log.stat().st_size if r.log else 0
        return extra

    def latency_checks(self, mock: MockUpstream, trickle: Proc | None, r: Proc) -> dict[str, Any]:
        out: dict[str, Any] = {}
        n = 100 if self.args.quick else 400
        body = chat_request_body(SSE_MODEL, True)
        out["ttfb_direct"] = measure_ttfb(mock.port, SSE_PATH, body, n)
        out["ttfb_iir"] = measure_ttfb(r.port, CHAT, body, n)
        self.log(f"  stream first byte at c=1 (p50): direct {out['ttfb_direct']['first_byte_ms_p50']:.3f} ms, "
                 f"iir {out['ttfb_iir']['first_byte_ms_p50']:.3f} ms")
        if trickle is not None:
            rel = measure_relay(trickle.port, CHAT, r.port, CHAT, chat_request_body(TRICKLE_MODEL, True),
                                self.args.trickle_chunks, self.args.trickle_gap_ms)
            out["relay"] = rel
            self.log(f"  relay of a trickled stream ({rel['chunks']} events, {rel['gap_ms']} ms apart): "
                     f"{rel['verdict']}; added ms per event {rel.get('added_ms_per_event')}")
        return out

    def portkey(self, mock: MockUpstream) -> dict[str, Any]:
        from benchmarks.portkey import ensure_portkey, portkey_headers, start_portkey

        entry, note = ensure_portkey()
        out: dict[str, Any] = {"note": note}
        if entry is None:
            self.log(f"portkey: {note}")
            return out
        self.log(f"portkey: {note}")
        with start_portkey(entry, self.workdir / "portkey.log") as pk:
            for kind, path in (("json", JSON_PATH), ("sse", SSE_PATH)):
                headers = portkey_headers(mock.base + path.removesuffix("/chat/completions"))
                check = self.check_response("portkey", pk.base + CHAT, kind, headers)
                out[f"check_{kind}"] = check
                if not check["ok"]:
                    self.log(f"  portkey {kind}: answers {check['status']} {check.get('body', '')[:120]!r}: not measured")
                    self.notes.append(f"portkey {kind}: answers {check['status']} on this machine "
                                      f"(node {_version(['node', '--version'])}); not measured")
                    continue
                self.scenario("portkey", 1, kind, pk.base + CHAT, pk.pid, headers)
        return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test of the harness): 2 s each, c=1,64")
    ap.add_argument("--duration", type=float, help="seconds per measured run [8; quick: 2]")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up before each run [2; quick: 1]")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], help="[1,8,64; quick: 1,64]")
    ap.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2], help="[1,2]")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk threads [1: leaves the other core to the target]")
    ap.add_argument("--trickle-chunks", type=int, default=6)
    ap.add_argument("--trickle-gap-ms", type=float, default=40.0)
    ap.add_argument("--no-portkey", action="store_true", help="skip the Portkey side-by-side")
    ap.add_argument("--no-floor", action="store_true", help="skip the bare-aiohttp reference proxy")
    ap.add_argument("--no-micro", action="store_true", help="skip the micro-benchmarks")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="directory for the JSON results")
    ap.add_argument("--label", default="", help="free text stored with the results")
    ap.add_argument("--src", type=Path, default=REPO,
                    help="directory whose iir/ package the router runs (A/B-compare a change) [this checkout]")
    ap.add_argument("--only", choices=["direct", "floor", "iir", "portkey"], action="append",
                    help="run only these targets (repeatable); direct always runs, for the ratios")
    args = ap.parse_args(argv)
    args.duration = args.duration or (2.0 if args.quick else 8.0)
    args.warmup = args.warmup or (1.0 if args.quick else 2.0)
    args.concurrency = args.concurrency or ([1, 64] if args.quick else [1, 8, 64])
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    missing = [name for name, found in (("nginx", nginx_binary()), ("wrk", wrk_binary())) if not found]
    if missing:
        print(f"make bench needs {' and '.join(missing)}: `make bench-deps` installs them from Debian "
              f"(apt-get install -y --no-install-recommends nginx-light wrk)", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "command": "python -m benchmarks.run " + shlex.join(argv or sys.argv[1:]),
        "label": args.label, "git": _git_commit(), "src": os.path.relpath(args.src, REPO), "host": platform.node(), "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(), "python": platform.python_version(),
        "nginx": _version([nginx_binary() or "nginx", "-v"]), "wrk": _version(["wrk", "-v"]),
        "duration_s": args.duration, "warmup_s": args.warmup, "concurrency": args.concurrency,
        "wrk_threads": args.wrk_threads, "sse_chunks": SSE_CHUNKS, "calibration": calibrate(),
    }
    print(f"iir bench: nginx mock ({meta['nginx']}), load by {meta['wrk'].split(' Copyright')[0]}, "
          f"{args.duration:g} s per run after {args.warmup:g} s warm-up, concurrency {args.concurrency}, "
          f"load average at start {meta['loadavg_start'][0]:.1f} on {meta['cpus']} CPUs; loopback TCP send+recv "
          f"{meta['calibration']['tcp_send_recv_us']} µs, Python loop step {meta['calibration']['python_loop_ns']} ns",
          flush=True)
    results: dict[str, Any] = {"meta": meta}
    with tempfile.TemporaryDirectory(prefix="iir-bench-") as d:
        bench = Bench(args, Path(d))
        with start_mock() as mock, start_trickle(args.trickle_chunks, args.trickle_gap_ms) as trickle:
            bench.mock = mock
            only = set(args.only or ["direct", "floor", "iir", "portkey"])
            bench.direct(mock)
            if "floor" in only and not args.no_floor:
                bench.floor(mock)
            if "iir" in only:
                results["iir"] = [bench.router(mock, trickle, w) for w in args.workers]
            if "portkey" in only and not args.no_portkey:
                results["portkey"] = bench.portkey(mock)
    results["runs"] = bench.runs
    if not args.no_micro:
        from benchmarks import micro

        print("micro-benchmarks", flush=True)
        micro_json = Path(tempfile.mkstemp(prefix="iir-bench-micro-", suffix=".json")[1])
        micro.main((["--quick"] if args.quick else []) + ["--json", str(micro_json)])
        results["micro"] = orjson.loads(micro_json.read_bytes())
        micro_json.unlink()
    meta["loadavg_end"] = os.getloadavg()
    meta["seconds"] = round(time.time() - started.timestamp(), 1)
    results["notes"] = bench.notes
    results["verdicts"] = report.verdicts(results)
    print()
    print(report.table(results))
    print()
    print(report.verdict_text(results["verdicts"]))
    for note in bench.notes:
        print(f"note: {note}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{started.strftime('%Y%m%dT%H%M%SZ')}{'-quick' if args.quick else ''}.json"
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"\nresults: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
