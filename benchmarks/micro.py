"""Micro-benchmarks of the router's compiled parts, with time.perf_counter.

    python -m benchmarks.micro [--quick] [--json FILE]

- routing decision for specs of 10, 1,000 and 10,000 models (and 10 / 1,000 rules): the time to
  pick the route for one request (``iir.plugins.matching.match_route`` when present, otherwise
  the table's ``routes_for`` + ``Match.model_matches`` as a proxy, and the report says which);
- compile + swap of a 10,000-model spec: load, check, compile (``build_table``), swap (one
  reference assignment), each phase timed;
- token counting per request (``iir.policies.tokens`` when present, else the matcher's estimate).

Targets (issue #9): routing flat within 2x from 10 to 10,000 models; compile + swap < 1 s.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks.specs import scaled_spec
from benchmarks.wrk import chat_request_body

__all__ = ["bench_compile", "bench_routing", "bench_tokens", "main", "per_call_us"]


def per_call_us(fn: Callable[[], Any], budget_s: float = 0.3, repeats: int = 7) -> float:
    """Mean time of one call in the fastest of ``repeats`` batches, in microseconds."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget_s / repeats / 4 or n < 1:  # calibrate the batch size
        fn()
        n += 1
    batch = max(1, n * 4)
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t) / batch * 1e6)
    return min(samples)  # the least-disturbed batch: robust on a shared, noisy machine


def _optional(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _build(text: str, workdir: Path, name: str) -> Any:
    from iir.compile.build import build_table

    path = workdir / name
    path.write_text(text)
    return build_table(path, {}).table


def _router_for(table: Any) -> tuple[str, Callable[[dict[str, Any]], Any]]:
    """(how, decide(body)): the real matcher (features → first matching route → candidate
    backends) if it exists, else the table's index as a proxy."""
    matching = _optional("iir.plugins.matching")
    if matching is not None and hasattr(matching, "match_route") and hasattr(matching, "features_from_body"):
        cache: dict[int, Any] = {}

        def decide(body: dict[str, Any]) -> Any:
            # Features (prompt text, token estimate) do not depend on the spec: computed once
            # per body here and timed separately (bench_features).
            features = cache.get(id(body))
            if features is None:
                features = cache[id(body)] = matching.features_from_body(body)
            route, _ = matching.match_route(table, features)
            if route is not None:
                matching.candidates(table, route, features)
            return route
        return "match_route + candidates (iir.plugins.matching), features precomputed", decide

    def proxy(body: dict[str, Any]) -> Any:
        model, tools = body["model"], bool(body.get("tools"))
        for route in table.routes_for(model):
            mt = route.match
            if mt.model_matches(model) and (mt.tools is None or mt.tools == tools):
                return route
        return None
    return "table.routes_for + Match.model_matches (proxy: iir.plugins.matching not available)", proxy


def bench_routing(sizes: list[tuple[int, int]], workdir: Path, budget_s: float, rounds: int = 5) -> dict[str, Any]:
    """Per-request routing decision time for each (models, rules) spec size.

    Every size answers the same three kinds of request, on the same code path: the first rule,
    the last exact rule, and a declared model no rule names (the ``by-model`` catch-all), so
    the ratios compare like with like. The cells are measured in ``rounds`` interleaved passes
    (fastest kept) so that machine drift hits every size alike."""
    out: dict[str, Any] = {"rows": []}
    cells: list[tuple[dict[str, Any], str, Callable[[], Any]]] = []
    for models, rules in sizes:
        table = _build(scaled_spec(models, rules), workdir, f"route-{models}-{rules}.yaml")
        how, decide = _router_for(table)
        out["how"] = how
        cases = {
            "first-rule": "m00000",
            "last-exact-rule": f"m{max(0, min(models, rules) - 2):05d}",
            "catch-all": f"m{models - 1:05d}" if models > rules else "unknown-model",
        }
        row: dict[str, Any] = {"models": models, "rules": rules}
        for case, model in cases.items():
            body = orjson.loads(chat_request_body(model))
            route = decide(body)
            row[case] = {"model": model, "route": getattr(route, "name", repr(route)[:40]), "us": float("inf")}
            cells.append((row[case], case, functools.partial(decide, body)))
        out["rows"].append(row)
    for _ in range(rounds):
        for cell, _case, fn in cells:
            cell["us"] = min(cell["us"], round(per_call_us(fn, budget_s / rounds), 3))

    def worst_ratio(rows: list[dict[str, Any]]) -> float:
        base, worst = rows[0], 0.0
        for row in rows:
            for case in ("first-rule", "last-exact-rule", "catch-all"):
                worst = max(worst, row[case]["us"] / max(base[case]["us"], 1e-9))
        return round(worst, 2)

    # The target is about the number of models (same 10 rules); growing the number of rules is
    # reported too (glob rules are tried in order, so it is expected to grow with them).
    few_rules = [r for r in out["rows"] if r["rules"] == out["rows"][0]["rules"]]
    out["worst_ratio_vs_smallest"] = worst_ratio(few_rules)
    many_rules = [out["rows"][0], *(r for r in out["rows"] if r["rules"] > out["rows"][0]["rules"])]
    if len(many_rules) > 1:
        out["rules_worst_ratio_vs_smallest"] = worst_ratio(many_rules)
    out["target"] = f"flat within 2x from {few_rules[0]['models']:,} to {few_rules[-1]['models']:,} models"
    out["met"] = out["worst_ratio_vs_smallest"] <= 2.0
    return out


def bench_features(budget_s: float) -> dict[str, Any]:
    """``features_from_body`` for a typical request: per request, independent of the spec size."""
    matching = _optional("iir.plugins.matching")
    if matching is None or not hasattr(matching, "features_from_body"):
        return {"how": "not available"}
    body = orjson.loads(chat_request_body("m00000"))
    return {"how": "iir.plugins.matching.features_from_body (its default token estimate)",
            "us": round(per_call_us(lambda: matching.features_from_body(body), budget_s), 3)}


def bench_compile(models: int, rules: int, workdir: Path) -> dict[str, Any]:
    """Wall time of each config-pipeline phase for one spec, and of the swap."""
    from iir.compile.compiler import compile_spec
    from iir.spec.check import check_spec
    from iir.spec.load import load_spec

    path = workdir / f"compile-{models}-{rules}.yaml"
    path.write_text(scaled_spec(models, rules))
    holder: dict[str, Any] = {"table": None}
    gc.collect()
    t0 = time.perf_counter()
    loaded = load_spec(path, {})
    t1 = time.perf_counter()
    check_spec(loaded, {})
    t2 = time.perf_counter()
    table = compile_spec(loaded.spec, {}, str(path))
    t3 = time.perf_counter()
    holder["table"] = table  # the swap: one reference assignment
    t4 = time.perf_counter()
    total = t4 - t0
    return {"models": models, "rules": rules, "bytes": path.stat().st_size,
            "load_s": round(t1 - t0, 4), "check_s": round(t2 - t1, 4), "compile_s": round(t3 - t2, 4),
            "swap_s": round(t4 - t3, 7), "total_s": round(total, 4),
            "target": "< 1 s" if rules <= 10 else "none (informative)", "met": total < 1.0 if rules <= 10 else None}


def bench_tokens(budget_s: float) -> dict[str, Any]:
    """Prompt-token counting of one typical chat request (``TokenCounter.count_request``), for
    an open model (calibrated estimator) and an OpenAI-family one (tiktoken cl100k when its
    offline vocabulary is installed)."""
    tokens = _optional("iir.policies.tokens")
    if tokens is None or not hasattr(tokens, "TokenCounter"):
        return {"how": "not available: iir.policies.tokens.TokenCounter does not exist yet"}
    counter = tokens.TokenCounter()
    method = counter.load()
    out: dict[str, Any] = {"how": "iir.policies.tokens.TokenCounter.count_request", "method": method, "rows": []}
    for model in ("llama-3.1-8b", "gpt-4o-mini"):
        body = orjson.loads(chat_request_body(model))
        out["rows"].append({"model": model, "tokens": counter.count_request(body, "chat"),
                            "us_per_request": round(per_call_us(functools.partial(counter.count_request, body, "chat"), budget_s), 3)})
    return out


def bench_observe(budget_s: float, workdir: Path) -> dict[str, Any]:
    """Per-request observability cost: one ``request`` log line as production writes it
    (JSON, to a stream redirected to a file, flushed per record by logging.StreamHandler),
    the same without the per-record flush, and one metrics sample."""
    try:
        from iir.observability import logging as ilog
        from iir.observability.metrics import Metrics, RequestSample
        from iir.table import ServerSettings
    except ImportError as e:
        return {"how": f"not available: {e}"}
    import logging

    fields = {"request_id": "3462f7c8886dd982c7698137", "endpoint": "chat", "key": None, "model": "bench-json",
              "stream": False, "route": "by-model", "backend": "mock-json", "status": 200, "error": None,
              "attempts": [{"backend": "mock-json", "status": 200, "error": None, "ms": 0.61}],
              "latency_ms": 1.52, "ttft_ms": None, "upstream_ms": 0.61, "overhead_ms": 0.91,
              "prompt_tokens": 12, "completion_tokens": 18, "cache": "off", "ratelimit": "off"}
    out: dict[str, Any] = {"how": "iir.observability.logging.emit / Metrics.observe"}
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        with (workdir / "log.jsonl").open("w") as stream:
            logger = ilog.configure_logging(ServerSettings(), stream=stream)
            out["log_line_us"] = round(per_call_us(
                lambda: ilog.emit(logger, logging.INFO, "request", fields), budget_s), 3)
            for h in root.handlers:
                if getattr(h, "stream", None) is stream:
                    h.flush = lambda: None  # type: ignore[method-assign]
            out["log_line_no_flush_us"] = round(per_call_us(
                lambda: ilog.emit(logger, logging.INFO, "request", fields), budget_s), 3)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    try:
        metrics = Metrics()
        sample = RequestSample(model="bench-json", route="by-model", backend="mock-json", status=200, seconds=0.0015,
                               ttft=None, overhead=0.0009, prompt_tokens=12, completion_tokens=18, cache="off",
                               ratelimit="off", key="anonymous", error="", attempts=(("mock-json", "ok"),))
        out["metrics_observe_us"] = round(per_call_us(lambda: metrics.observe(sample), budget_s), 3)
    except TypeError as e:  # the sample's fields changed
        out["metrics_observe_us"] = None
        out["metrics_note"] = str(e)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller budgets and spec sizes (smoke run)")
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    ap.add_argument("--only", choices=["routing", "compile", "tokens", "observe"], action="append")
    args = ap.parse_args(argv)
    only = set(args.only or ["routing", "compile", "tokens", "observe"])
    budget = 0.1 if args.quick else 0.5
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="iir-bench-micro-") as d:
        work = Path(d)
        if "routing" in only:
            sizes = [(10, 5), (1000, 5), (10000, 5)] if not args.quick else [(10, 5), (1000, 5)]
            sizes += [(1000, 1000)] if not args.quick else [(100, 100)]
            results["routing"] = r = bench_routing(sizes, work, budget)
            print(f"routing decision ({r['how']}):")
            print(f"  {'models':>7} {'rules':>6} {'first-rule µs':>14} {'last-exact µs':>14} {'catch-all µs':>13}")
            for row in r["rows"]:
                print(f"  {row['models']:>7} {row['rules']:>6} {row['first-rule']['us']:>14.2f} "
                      f"{row['last-exact-rule']['us']:>14.2f} {row['catch-all']['us']:>13.2f}")
            print(f"  worst ratio vs the smallest spec, growing models: {r['worst_ratio_vs_smallest']}x "
                  f"(target {r['target']}: {'met' if r['met'] else 'MISSED'})")
            if "rules_worst_ratio_vs_smallest" in r:
                print(f"  worst ratio vs the smallest spec, growing rules: {r['rules_worst_ratio_vs_smallest']}x (no target)")
            results["features"] = ft = bench_features(budget)
            if "us" in ft:
                print(f"  request features, once per request ({ft['how']}): {ft['us']:.2f} µs")
        if "compile" in only:
            shapes = [(10000, 10), (1000, 1000)] if not args.quick else [(1000, 10)]
            results["compile"] = rows = [bench_compile(m, n, work) for m, n in shapes]
            for c in rows:
                print(f"compile+swap, {c['models']} models / {c['rules']} rules ({c['bytes'] // 1024} KiB): "
                      f"total {c['total_s']:.3f} s = load {c['load_s']:.3f} + check {c['check_s']:.3f} + "
                      f"compile {c['compile_s']:.3f} + swap {c['swap_s'] * 1e6:.1f} µs "
                      f"(target {c['target']}" + (f": {'met' if c['met'] else 'MISSED'})" if c["met"] is not None else ")"))
        if "tokens" in only:
            results["tokens"] = tk = bench_tokens(budget)
            for row in tk.get("rows", []):
                print(f"token counting per request, {row['model']} ({tk['how']}, vocabulary {tk['method']}): "
                      f"{row['us_per_request']:.2f} µs ({row['tokens']} tokens)")
            if "rows" not in tk:
                print(f"token counting: {tk['how']}")
        if "observe" in only:
            results["observe"] = ob = bench_observe(budget, work)
            if "log_line_us" in ob:
                print(f"request log line (JSON, to a file): {ob['log_line_us']:.2f} µs with the per-record flush, "
                      f"{ob['log_line_no_flush_us']:.2f} µs without; metrics sample: {ob.get('metrics_observe_us')} µs")
            else:
                print(f"observability: {ob['how']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
