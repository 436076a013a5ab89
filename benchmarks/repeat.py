"""Added latency at low concurrency, repeated: is a p50 difference real or the machine's noise?

    python -m benchmarks.repeat [--kind json] [--concurrency 1] [--rounds 5] [--duration 4]

Starts the nginx mock, the floor proxy and one iir worker once, then measures direct, floor and
iir in turn, ``--rounds`` times (interleaved, so that drift hits all three alike), and prints
every round's p50 added over direct plus the median and range. The single-run figure of
``make bench`` is one draw from this spread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.mock_upstream import JSON_PATH, SSE_PATH, free_port, start_mock
from benchmarks.run import CHAT, KINDS
from benchmarks.specs import bench_spec
from benchmarks.targets import start_floor, start_router
from benchmarks.wrk import chat_request_body, run_wrk

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.repeat", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["json", "sse"], default="json")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0)
    args = ap.parse_args(argv)
    model, stream, temperature = KINDS[args.kind]
    body = chat_request_body(model, stream, temperature)
    added: dict[str, list[float]] = {"floor": [], "iir": []}
    with tempfile.TemporaryDirectory(prefix="iir-bench-repeat-") as d, start_mock() as mock:
        port = free_port()
        direct = mock.base + (JSON_PATH if args.kind == "json" else SSE_PATH)
        with start_floor(mock.base) as fl, \
                start_router(bench_spec(mock.port, port, 1, Path(d) / "reg.db"), Path(d), port, 1) as r:
            targets = {"direct": direct, "floor": fl.base + CHAT, "iir": r.base + CHAT}
            for url in targets.values():  # warm-up
                run_wrk(url, body, connections=args.concurrency, duration=1)
            for i in range(args.rounds):
                p50 = {name: run_wrk(url, body, connections=args.concurrency, duration=args.duration)
                       .latency_ms["p50"] for name, url in targets.items()}
                for name in added:
                    added[name].append(p50[name] - p50["direct"])
                print(f"round {i + 1}: p50 direct {p50['direct']:.3f} ms, added: floor {added['floor'][-1]:+.3f} ms, "
                      f"iir {added['iir'][-1]:+.3f} ms", flush=True)
    for name, values in added.items():
        print(f"{name}: added p50 median {statistics.median(values):+.3f} ms, range {min(values):+.3f} .. "
              f"{max(values):+.3f} ms ({args.kind}, c={args.concurrency}, {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
