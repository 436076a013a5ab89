"""The `make bench` harness works: its spec, mock upstream, load generator, /proc readings,
stream client and report. Not timed: nothing here asserts a speed (that is `make bench`).

nginx and wrk come from Debian (`make bench-deps`, part of `make system-deps`); like redis,
their absence is a failure, not a skip.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from benchmarks import report
from benchmarks.mock_upstream import (
    JSON_PATH,
    SSE_CHUNKS,
    SSE_PATH,
    chat_completion_body,
    nginx_binary,
    nginx_conf,
    sse_body,
    start_mock,
    write_site,
)
from benchmarks.procstat import descendants, tree_usage
from benchmarks.soak import leak_verdict
from benchmarks.specs import CACHED_MODEL, JSON_MODEL, SSE_MODEL, TRICKLE_MODEL, bench_spec, scaled_spec
from benchmarks.targets import start_trickle
from benchmarks.ttfb import measure_relay, measure_ttfb
from benchmarks.wrk import chat_request_body, lua_script, parse_wrk_output, run_wrk
from iir.compile.build import build_text


def _events(body: bytes) -> list[bytes]:
    return [ln[len(b"data: "):] for ln in body.split(b"\n") if ln.startswith(b"data: ")]


def test_bench_spec_compiles_with_one_backend_per_response_shape() -> None:
    built = build_text(bench_spec(mock_port=18080, listen_port=18000, workers=2, registry="/tmp/x.db",
                                  trickle_port=18081), "bench.yaml", {})
    t = built.table
    assert t.server.workers == 2 and t.server.port == 18000
    assert t.backends["mock-json"].base_url + "/chat/completions" == "http://127.0.0.1:18080" + JSON_PATH
    assert t.backends["mock-sse"].base_url + "/chat/completions" == "http://127.0.0.1:18080" + SSE_PATH
    assert t.model_index[JSON_MODEL] == ("mock-json",) and t.model_index[SSE_MODEL] == ("mock-sse",)
    assert t.model_index[TRICKLE_MODEL] == ("trickle",)
    cached = t.routes_for(CACHED_MODEL)[0]
    assert cached.name == "cached" and cached.cache
    assert not t.routes_for(JSON_MODEL)[0].cache  # only the cache scenario is cached


def test_scaled_spec_has_the_requested_models_and_rules() -> None:
    t = build_text(scaled_spec(150, 120), "scaled.yaml", {}).table
    assert len(t.model_index) == 150
    assert len(t.routes) == 121  # 120 rules + the by-model catch-all
    assert [r.name for r in t.routes if r.name.startswith("glob-")] == ["glob-00099"]
    assert t.routes_for("m00005")[0].name == "r00005"
    assert t.routes_for("m00140")[-1].name == "by-model"


def test_canned_bodies_are_valid_openai_responses() -> None:
    completion = ChatCompletion.model_validate(orjson.loads(chat_completion_body()))
    assert completion.choices[0].finish_reason == "stop"
    events = _events(sse_body())
    assert len(events) == SSE_CHUNKS + 1 and events[-1] == b"[DONE]"
    chunks = [ChatCompletionChunk.model_validate(orjson.loads(e)) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_nginx_accepts_the_generated_configuration(tmp_path: Path) -> None:
    binary = nginx_binary()
    assert binary, "nginx is missing: run `make bench-deps`"
    conf = write_site(tmp_path, port=18099)
    assert conf.read_text() == nginx_conf(tmp_path, 18099)
    check = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr


def test_wrk_output_parser() -> None:
    out = ("Running 1s test @ http://127.0.0.1:1/\n  1 threads and 1 connections\n"
           'WRK_JSON {"requests":1200,"duration_us":2000000,"bytes":480000,'
           '"errors":{"connect":0,"read":0,"write":0,"status":3,"timeout":0},'
           '"latency_us":{"min":50,"mean":80.5,"stdev":10.0,"max":900,"p50":70,"p90":120,"p99":400,"p999":800}}\n')
    r = parse_wrk_output(out)
    assert r.requests == 1200 and r.rps == 600.0 and r.error_count == 3
    assert r.latency_ms["p50"] == 0.07 and r.latency_ms["p99"] == 0.4
    with pytest.raises(ValueError, match="WRK_JSON"):
        parse_wrk_output("Running 1s test\nunable to connect\n")


def test_lua_script_quotes_any_body() -> None:
    script = lua_script(b'{"a": "]]", "b": "]=]"}', {"X-Test": "v"})
    assert "[==[" in script and 'wrk.method = "POST"' in script and "X-Test" in script


def test_nginx_mock_under_wrk_and_the_stream_client() -> None:
    with start_mock() as mock:
        for path, body, shape in ((JSON_PATH, chat_request_body(JSON_MODEL), chat_completion_body()),
                                  (SSE_PATH, chat_request_body(SSE_MODEL, stream=True), sse_body())):
            before = mock.accepted_connections()
            r = run_wrk(mock.base + path, body, connections=2, duration=1)
            assert r.requests > 0 and r.error_count == 0, r.errors
            assert r.bytes >= r.requests * len(shape)  # each response carried the whole canned body
            assert 2 <= mock.accepted_connections() - before <= 4  # keep-alive: ~one per wrk connection
        ttfb = measure_ttfb(mock.port, SSE_PATH, chat_request_body(SSE_MODEL, stream=True), n=20)
        assert 0 < ttfb["first_byte_ms_p50"] <= ttfb["stream_ms_p50"]
        usage = tree_usage(mock.proc.pid)
        assert len(usage.pids) >= 2 and all(r > 0 for r in usage.rss)  # nginx master + worker


def test_relay_check_reads_a_trickled_stream_event_by_event() -> None:
    with start_trickle(chunks=4, gap_ms=30) as tr:
        body = chat_request_body(TRICKLE_MODEL, stream=True)
        rel = measure_relay(tr.port, "/v1/chat/completions", tr.port, "/v1/chat/completions", body, 4, 30)
    assert len(rel["direct"]) == 5  # 4 chunks + [DONE]
    assert rel["direct"][3] - rel["direct"][0] >= 3 * 30 * 0.9  # spaced out, not bunched
    assert rel["met"] is True  # the same upstream on both sides: nothing held back


def test_proc_readings_cover_children() -> None:
    code = "import subprocess,sys,time; c=subprocess.Popen([sys.executable,'-c','import time; time.sleep(30)']); " \
           "t=time.process_time()\nwhile time.process_time()-t<0.3: pass\ntime.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not descendants(proc.pid) or tree_usage(proc.pid).cpu_s < 0.3):
            time.sleep(0.05)
        usage = tree_usage(proc.pid)
        assert len(usage.pids) == 2 and usage.cpu_s >= 0.3
    finally:
        for pid in descendants(proc.pid):
            subprocess.run(["kill", str(pid)], check=False)
        proc.kill()
        proc.wait()


def _run(target: str, kind: str, c: int, rps: float, p50: float, cpu: float | None, rss: list[float]) -> dict:
    return {"target": target, "kind": kind, "concurrency": c, "rps": rps, "requests": int(rps * 8),
            "errors": {"connect": 0}, "latency_ms": {"p50": p50, "p90": p50 * 2, "p99": p50 * 3},
            "cpu_ms_per_req": cpu, "rss_mb": rss}


def test_report_table_and_verdicts() -> None:
    runs = [_run("direct", "json", 1, 10000, 0.10, 0.01, [7]), _run("direct", "json", 64, 20000, 3.0, 0.01, [7]),
            _run("direct", "sse", 64, 15000, 4.0, 0.02, [7]),
            _run("iir-1w", "json", 1, 1500, 0.55, 0.30, [60]), _run("iir-1w", "json", 64, 3000, 20.0, 0.35, [62]),
            _run("iir-1w", "sse", 64, 2000, 30.0, 0.70, [64]), _run("iir-1w", "cached", 1, 4000, 0.08, 0.1, [64]),
            _run("iir-2w", "json", 64, 4500, 14.0, 0.36, [30, 61, 61]), _run("portkey", "json", 64, 900, 70.0, 1.5, [90])]
    results = {"runs": runs, "iir": [{"workers": 1, "cache_hits": True,
                                      "ttfb_direct": {"first_byte_ms_p50": 0.1}, "ttfb_iir": {"first_byte_ms_p50": 0.6}}]}
    got = {v["name"]: v["met"] for v in report.verdicts(results)}
    assert got == {"cpu_json": True, "cpu_sse": False, "added_p50": True, "stream_ttfb": True,
                   "vs_portkey": True, "workers": False, "cache_hit": True, "rss": True}
    text = report.table(results)
    assert "iir-2w" in text and "0.15" in text  # iir-1w json c=1: 1500 / 10000 req/s of direct
    assert report.table(results, markdown=True).startswith("| shape |")


def test_router_overhead_is_read_from_the_request_log_lines(tmp_path: Path) -> None:
    from benchmarks.run import overhead_from_log

    log = tmp_path / "router.log"
    log.write_bytes(b'{"event":"request","overhead_ms":9.0}\n')
    offset = log.stat().st_size
    with log.open("ab") as f:
        for v in (0.5, 0.7, 0.6, 2.0):
            f.write(orjson.dumps({"ts": "x", "event": "request", "overhead_ms": v}) + b"\n")
        f.write(b'{"event":"startup"}\nnot json\n')
    got = overhead_from_log(log, offset)
    assert got == {"n": 4, "p50": 0.7, "p90": 2.0}


def test_leak_verdict() -> None:
    assert leak_verdict([60.0], [62.9])["met"] is True
    assert leak_verdict([60.0, 30.0], [64.0, 30.0])["met"] is False
