"""Tables and target verdicts from benchmark results (the JSON that benchmarks.run writes).

    python -m benchmarks.report benchmarks/results/<file>.json [--markdown]

re-prints the table and verdicts of a stored run (``--markdown`` for docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

__all__ = ["find_run", "table", "verdict_text", "verdicts"]

_KIND_ORDER = {"json": 0, "sse": 1, "cached": 2}
_DIRECT_KIND = {"json": "json", "sse": "sse", "cached": "json"}  # a cache hit is compared with a real upstream call


def find_run(runs: list[dict[str, Any]], target: str, kind: str, concurrency: int) -> dict[str, Any] | None:
    return next((r for r in runs if r["target"] == target and r["kind"] == kind and r["concurrency"] == concurrency), None)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _rows(results: dict[str, Any]) -> list[list[str]]:
    runs = results.get("runs", [])
    order = {"direct": 0, "floor": 1, "iir-1w": 2, "iir-2w": 3, "portkey": 4}
    rows = []
    for r in sorted(runs, key=lambda r: (_KIND_ORDER.get(r["kind"], 9), r["concurrency"], order.get(r["target"], 9))):
        d = find_run(runs, "direct", _DIRECT_KIND.get(r["kind"], r["kind"]), r["concurrency"])
        lat = r["latency_ms"]
        ratio = added = "-"
        if d is not None and r["target"] != "direct" and d["rps"]:
            ratio = f"{r['rps'] / d['rps']:.2f}"
            added = f"{lat['p50'] - d['latency_ms']['p50']:+.3f}"
        errs = sum(r["errors"].values())
        own = (r.get("router_overhead_ms") or {}).get("p50")
        rows.append([r["kind"], str(r["concurrency"]), r["target"], f"{r['rps']:.0f}", _fmt(lat["p50"]), _fmt(lat["p90"]),
                     _fmt(lat["p99"]), _fmt(r.get("cpu_ms_per_req")), "/".join(f"{x:.0f}" for x in r.get("rss_mb", [])) or "-",
                     ratio, added, _fmt(own), _fmt(r.get("idle_cpus"), 2), str(errs) if errs else ""])
    return rows


_HEAD = ["shape", "conc", "target", "req/s", "p50 ms", "p90 ms", "p99 ms", "CPU ms/req", "RSS MB",
         "req/s vs direct", "p50 vs direct ms", "own ms p50", "idle CPUs", "errors"]


def table(results: dict[str, Any], markdown: bool = False) -> str:
    rows = _rows(results)
    if markdown:
        lines = ["| " + " | ".join(_HEAD) + " |", "|" + "|".join("---:" if i > 2 else "---" for i in range(len(_HEAD))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(_HEAD)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*_HEAD), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in rows]
    return "\n".join(out)


def _v(name: str, target: str, measured: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"name": name, "target": target, "measured": measured, "met": met, "note": note}


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    runs = results.get("runs", [])
    concs = sorted({r["concurrency"] for r in runs})
    hi = 64 if 64 in concs else (concs[-1] if concs else 0)
    out = []
    for kind, limit in (("json", 0.4), ("sse", 0.6)):
        r = find_run(runs, "iir-1w", kind, hi)
        what = "non-streaming request" if kind == "json" else f"{results.get('meta', {}).get('sse_chunks', 20)}-chunk stream"
        if r is None or r.get("cpu_ms_per_req") is None:
            out.append(_v(f"cpu_{kind}", f"≤ {limit} ms CPU per {what} (1 worker, c={hi})", "not measured", None))
        else:
            v = r["cpu_ms_per_req"]
            out.append(_v(f"cpu_{kind}", f"≤ {limit} ms CPU per {what} (1 worker, c={hi})", f"{v:.3f} ms",
                          v <= limit, "" if v <= limit else f"missed by {v - limit:.3f} ms ({v / limit:.1f}x)"))
    r, d = find_run(runs, "iir-1w", "json", 1), find_run(runs, "direct", "json", 1)
    if r and d:
        added = r["latency_ms"]["p50"] - d["latency_ms"]["p50"]
        out.append(_v("added_p50", "≤ +0.5 ms p50 at c=1, non-streaming", f"{added:+.3f} ms", added <= 0.5,
                      "" if added <= 0.5 else f"missed by {added - 0.5:.3f} ms"))
    iir1: dict[str, Any] = next((x for x in results.get("iir", []) if x.get("workers") == 1), {})
    if "ttfb_iir" in iir1 and "ttfb_direct" in iir1:
        added = iir1["ttfb_iir"]["first_byte_ms_p50"] - iir1["ttfb_direct"]["first_byte_ms_p50"]
        out.append(_v("stream_ttfb", "stream first byte ≤ direct + 1 ms (c=1, p50)", f"{added:+.3f} ms", added <= 1.0,
                      "" if added <= 1.0 else f"missed by {added - 1.0:.3f} ms"))
    if "relay" in iir1:
        rel = iir1["relay"]
        out.append(_v("relay", "chunks relayed as they arrive", f"max +{rel.get('max_added_ms', '?')} ms per event "
                      f"({rel['chunks']} events {rel['gap_ms']} ms apart)", bool(rel.get("met")), rel.get("verdict", "")))
    r1, pk = find_run(runs, "iir-1w", "json", hi), find_run(runs, "portkey", "json", hi)
    if r1 and pk and pk["rps"]:
        ratio = r1["rps"] / pk["rps"]
        out.append(_v("vs_portkey", f"1-worker throughput ≥ 3x Portkey (json, c={hi})", f"{ratio:.2f}x", ratio >= 3.0,
                      "" if ratio >= 3 else f"missed: {ratio:.2f}x of 3x"))
    else:
        note = results.get("portkey", {}).get("note", "not run")
        out.append(_v("vs_portkey", f"1-worker throughput ≥ 3x Portkey (json, c={hi})", "not measured", None, note))
    r2 = find_run(runs, "iir-2w", "json", hi)
    if r1 and r2 and r1["rps"]:
        ratio = r2["rps"] / r1["rps"]
        note = "" if ratio >= 1.6 else f"missed: {ratio:.2f}x of 1.6x"
        if r1.get("idle_cpus") is not None:  # a second worker can only use CPU the first one left idle
            note += (f"{'; ' if note else ''}CPUs idle during the 1-worker run: {r1['idle_cpus']:.2f} of "
                     f"{results.get('meta', {}).get('cpus', '?')}; CPU ms/req 1 worker {r1['cpu_ms_per_req']:.3f}, "
                     f"2 workers {r2['cpu_ms_per_req']:.3f}")
        out.append(_v("workers", f"--workers 2 ≥ 1.6x one worker (json, c={hi})", f"{ratio:.2f}x", ratio >= 1.6, note))
    rc, d = find_run(runs, "iir-1w", "cached", 1), find_run(runs, "direct", "json", 1)
    if rc and d:
        hits = bool(iir1.get("cache_hits"))
        p50, dp50 = rc["latency_ms"]["p50"], d["latency_ms"]["p50"]
        ru = find_run(runs, "iir-1w", "json", 1)
        vs_uncached = f", iir uncached {ru['latency_ms']['p50']:.3f} ms" if ru else ""
        out.append(_v("cache_hit", "cache hit (memory) p50 < direct upstream p50 (c=1)",
                      f"{p50:.3f} ms vs direct {dp50:.3f} ms{vs_uncached}", hits and p50 < dp50,
                      "" if hits else "no cache hits observed (cache not active)"))
    rss = [x for r in runs if r["target"].startswith("iir") for x in r.get("rss_mb", [])]
    if rss:
        out.append(_v("rss", "≤ 100 MB RSS per worker", f"max {max(rss):.0f} MB", max(rss) <= 100,
                      "" if max(rss) <= 100 else f"missed by {max(rss) - 100:.0f} MB"))
    micro = results.get("micro", {})
    if "routing" in micro:
        m = micro["routing"]
        out.append(_v("routing_flat", m["target"], f"worst {m['worst_ratio_vs_smallest']}x", m["met"], m.get("how", "")))
    for c in micro.get("compile", []):
        if c.get("met") is None:
            continue  # informative shapes (many rules) have no target
        out.append(_v("compile_swap", f"compile + swap of a {c['models']}-model spec < 1 s", f"{c['total_s']:.3f} s",
                      c["met"], f"load {c['load_s']:.3f} + check {c['check_s']:.3f} + compile {c['compile_s']:.3f} s"))
    soak = results.get("soak")
    if soak:
        for row in soak.get("verdicts", []):
            out.append(row)
    return out


def verdict_text(vs: list[dict[str, Any]], markdown: bool = False) -> str:
    mark = {True: "met", False: "MISSED", None: "n/a"}
    if markdown:
        lines = ["| target | measured | verdict | note |", "|---|---|---|---|"]
        lines += [f"| {v['target']} | {v['measured']} | {mark[v['met']]} | {v['note']} |" for v in vs]
        return "\n".join(lines)
    return "\n".join(f"[{mark[v['met']]:>6}] {v['target']}: {v['measured']}" + (f"  ({v['note']})" if v["note"] else "")
                     for v in vs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report")
    ap.add_argument("results", type=Path)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    results = orjson.loads(args.results.read_bytes())
    print(table(results, markdown=args.markdown))
    print()
    print(verdict_text(verdicts(results), markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
