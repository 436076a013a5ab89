"""A/B-compare two iir source trees under the same load, interleaved to cancel machine drift.

    python -m benchmarks.ab --a . --b /tmp/iir-patched [--kind json] [--concurrency 64]
                            [--rounds 3] [--duration 5]

Each round starts a 1-worker router from tree A, measures it, stops it, then does the same
for tree B (against one nginx mock). Prints router CPU ms per request and requests/s per
round and the medians, and the change B vs A. A tree is any directory holding an ``iir/``
package (e.g. a copy of ``iir/`` with a hot-path change applied).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.mock_upstream import free_port, start_mock
from benchmarks.procstat import tree_usage
from benchmarks.run import CHAT, KINDS
from benchmarks.specs import bench_spec
from benchmarks.targets import start_router
from benchmarks.wrk import chat_request_body, run_wrk

__all__ = ["main"]


def _measure(src: Path, mock_port: int, workdir: Path, body: bytes, conc: int, duration: float) -> dict[str, Any]:
    port = free_port()
    with start_router(bench_spec(mock_port, port, 1, workdir / "reg.db"), workdir, port, 1, src=src) as r:
        run_wrk(r.base + CHAT, body, connections=conc, duration=2)
        u0 = tree_usage(r.pid)
        res = run_wrk(r.base + CHAT, body, connections=conc, duration=duration)
        u1 = tree_usage(r.pid)
    if res.error_count:
        raise RuntimeError(f"errors under load from {src}: {res.errors}")
    return {"cpu_ms": (u1.cpu_s - u0.cpu_s) * 1000 / max(1, res.requests), "rps": res.rps, "p50": res.latency_ms["p50"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True)
    ap.add_argument("--b", type=Path, required=True)
    ap.add_argument("--kind", choices=sorted(KINDS), default="json")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args(argv)
    model, stream, temperature = KINDS[args.kind]
    body = chat_request_body(model, stream, temperature)
    rows: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="iir-bench-ab-") as d, start_mock() as mock:
        for i in range(args.rounds):
            for name, src in (("A", args.a), ("B", args.b)):
                m = _measure(src.resolve(), mock.port, Path(d), body, args.concurrency, args.duration)
                rows[name].append(m)
                print(f"round {i + 1} {name}: {m['cpu_ms']:.3f} ms CPU/req  {m['rps']:.0f} req/s  p50 {m['p50']:.2f} ms",
                      flush=True)
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("cpu_ms", "rps", "p50")} for k, v in rows.items()}
    a, b = med["A"], med["B"]
    print(f"\nmedian A ({args.a}): {a['cpu_ms']:.3f} ms CPU/req, {a['rps']:.0f} req/s")
    print(f"median B ({args.b}): {b['cpu_ms']:.3f} ms CPU/req, {b['rps']:.0f} req/s")
    print(f"B vs A: CPU/req {100 * (b['cpu_ms'] / a['cpu_ms'] - 1):+.1f}%, req/s {100 * (b['rps'] / a['rps'] - 1):+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
