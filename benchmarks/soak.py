"""Leak check (``make bench-soak``): router RSS after 200,000 requests vs after the first 10,000.

    python -m benchmarks.soak [--requests 200000] [--baseline 10000] [--max-seconds 1500]
                              [--concurrency 64] [--workers 1]

One router (production settings) behind the nginx mock; wrk alternates 5-second slices of
non-streaming and streaming load until ``--requests`` have completed (or ``--max-seconds``
passed: the report then says how many were reached). RSS of every router process is sampled
after every slice. Target (issue #9): the RSS at the end is within 5 % of the RSS after the
first ``--baseline`` requests. Writes benchmarks/results/soak-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.mock_upstream import free_port, start_mock
from benchmarks.procstat import tree_usage
from benchmarks.run import CHAT
from benchmarks.specs import JSON_MODEL, SSE_MODEL, bench_spec
from benchmarks.targets import REPO, start_router
from benchmarks.wrk import chat_request_body, run_wrk

__all__ = ["leak_verdict", "main"]


def leak_verdict(baseline_rss: list[float], end_rss: list[float], limit: float = 0.05) -> dict[str, Any]:
    """Compare the largest process RSS at the end with the one at the baseline."""
    b, e = max(baseline_rss), max(end_rss)
    growth = (e - b) / b if b else 0.0
    return {"name": "leak", "target": f"RSS after the soak within {limit:.0%} of RSS after the baseline",
            "measured": f"{b:.1f} MB -> {e:.1f} MB ({growth:+.1%})", "met": growth <= limit,
            "note": "" if growth <= limit else f"grew {growth:.1%}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--baseline", type=int, default=10_000)
    ap.add_argument("--max-seconds", type=float, default=1500.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--slice", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--src", type=Path, default=REPO)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    bodies = [chat_request_body(JSON_MODEL), chat_request_body(SSE_MODEL, stream=True)]
    started = dt.datetime.now(dt.UTC)
    series: list[dict[str, Any]] = []
    baseline: list[float] | None = None
    done = errors = 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="iir-bench-soak-") as d, start_mock() as mock:
        port = free_port()
        spec = bench_spec(mock.port, port, args.workers, Path(d) / "reg.db")
        with start_router(spec, Path(d), port, args.workers, src=args.src) as r:
            print(f"soak: {args.requests} requests (json and 20-chunk sse alternating), c={args.concurrency}, "
                  f"{args.workers} worker(s), at most {args.max_seconds:.0f} s", flush=True)
            i = 0
            while done < args.requests and time.monotonic() - t0 < args.max_seconds:
                res = run_wrk(r.base + CHAT, bodies[i % 2], connections=args.concurrency, duration=args.slice)
                i += 1
                done += res.requests
                errors += res.error_count
                rss = tree_usage(r.pid).rss_mb
                series.append({"requests": done, "seconds": round(time.monotonic() - t0, 1), "rss_mb": rss})
                if baseline is None and done >= args.baseline:
                    baseline = rss
                    print(f"  baseline after {done} requests: RSS {rss} MB", flush=True)
                if i % 10 == 0:
                    print(f"  {done} requests, {time.monotonic() - t0:.0f} s, RSS {rss} MB", flush=True)
            end = tree_usage(r.pid).rss_mb
    result: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "requests": done, "errors": errors,
                              "target_requests": args.requests, "baseline_requests": args.baseline,
                              "seconds": round(time.monotonic() - t0, 1), "series": series, "rss_end_mb": end}
    if baseline is None:
        result["verdicts"] = [{"name": "leak", "target": "RSS after the soak within 5% of RSS after the baseline",
                               "measured": f"only {done} requests", "met": None, "note": "baseline not reached"}]
    else:
        result["rss_baseline_mb"] = baseline
        v = leak_verdict(baseline, end)
        if done < args.requests:
            v["note"] = (v["note"] + "; " if v["note"] else "") + f"reached {done} of {args.requests} requests in time"
        result["verdicts"] = [v]
    print(f"soak: {done} requests ({errors} errors) in {result['seconds']} s; " + result["verdicts"][0]["measured"]
          + f"; {'met' if result['verdicts'][0]['met'] else 'NOT met' if result['verdicts'][0]['met'] is False else 'n/a'}"
          + (f" ({result['verdicts'][0]['note']})" if result["verdicts"][0]["note"] else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"soak-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
