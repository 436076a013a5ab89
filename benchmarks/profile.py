"""Profile the router under load with py-spy: where does its CPU go per request?

    python -m benchmarks.profile [--kind json|sse|cached] [--concurrency 64] [--duration 10]
                                 [--out DIR]

Starts the nginx mock and one router worker (as ``benchmarks.run`` does), drives it with wrk,
and samples the worker with ``py-spy record --format raw`` (collapsed stacks, GIL-holding
samples only with ``--gil``). Prints the functions with the most inclusive and self samples
and writes the collapsed stacks (flamegraph input) and a summary to ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from benchmarks.mock_upstream import free_port, start_mock
from benchmarks.run import CHAT, KINDS
from benchmarks.specs import bench_spec
from benchmarks.targets import REPO, start_router
from benchmarks.wrk import chat_request_body, run_wrk

__all__ = ["main", "summarise"]


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep function + short path
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    short = path.split("site-packages/")[-1].split(f"{REPO}/")[-1]
    return f"{name} ({short})"


def summarise(collapsed: str, top: int = 30) -> str:
    """Top functions by inclusive and by self samples from py-spy's collapsed-stack output."""
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        self_[frames[-1]] += n
    if not total:
        return "no samples"
    out = [f"{total} samples", "", f"top {top} by inclusive samples:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    out += ["", f"top {top} by self samples:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in self_.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=sorted(KINDS), default="json")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--gil", action="store_true", help="only samples holding the GIL (py-spy --gil)")
    ap.add_argument("--src", type=Path, default=REPO, help="directory whose iir/ package the router runs")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "profile")
    args = ap.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not installed: `.venv/bin/pip install -e '.[bench]'`", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    model, stream, temperature = KINDS[args.kind]
    body = chat_request_body(model, stream, temperature)
    raw = args.out / f"{args.kind}-c{args.concurrency}.collapsed"
    with tempfile.TemporaryDirectory(prefix="iir-bench-prof-") as d, start_mock() as mock:
        port = free_port()
        with start_router(bench_spec(mock.port, port, 1, Path(d) / "reg.db"), Path(d), port, 1, src=args.src) as r:
            run_wrk(r.base + CHAT, body, connections=args.concurrency, duration=2)  # warm-up
            load = threading.Thread(target=run_wrk, args=(r.base + CHAT, body),
                                    kwargs={"connections": args.concurrency, "duration": args.duration + 2})
            load.start()
            cmd = [spy, "record", "--pid", str(r.pid), "--duration", str(args.duration), "--rate", str(args.rate),
                   "--format", "raw", "--output", str(raw), "--nonblocking"] + (["--gil"] if args.gil else [])
            subprocess.run(cmd, check=True, capture_output=True, timeout=args.duration + 60)
            load.join()
    text = summarise(raw.read_text())
    (args.out / f"{args.kind}-c{args.concurrency}.txt").write_text(text + "\n")
    print(text)
    print(f"\ncollapsed stacks (flamegraph input): {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
