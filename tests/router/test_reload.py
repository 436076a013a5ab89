"""Hot reload: all-or-nothing, under traffic, from the watcher and from POST /admin/reload."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import aiohttp
import pytest

from tests.router.conftest import base

SPEC = """version: 1
state: {{registry: "{{registry}}"}}
backends:
  a: {{kind: openai-compatible, url: "{a}", models: [m]}}
  b: {{kind: openai-compatible, url: "{b}", models: [m]}}
routes:
  - name: main
    match: {{model: m}}
    to: [{target}]
"""
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def two(upstreams, router, tmp_path):
    a, b = await upstreams(), await upstreams()
    srv = await router(SPEC.format(a=a.url, b=b.url, target="a"))

    def write(target: str, extra: str = "") -> None:
        text = SPEC.format(a=a.url, b=b.url, target=target).replace("{registry}", str(tmp_path / "registry.db"))
        tmp = tmp_path / "iir.yaml.tmp"
        tmp.write_text(text + extra)
        tmp.replace(tmp_path / "iir.yaml")  # atomic, as editors and ConfigMaps do

    return srv, write


async def test_reload_under_traffic_loses_nothing_and_applies_fast(two):
    srv, write = two
    results: list[tuple[float, int, str]] = []  # (started, status, backend)
    stop = asyncio.Event()

    async def client_loop(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            started = time.monotonic()
            async with session.post(base(srv) + "/v1/chat/completions", json=CHAT) as r:
                await r.read()
                results.append((started, r.status, r.headers.get("x-iir-backend", "")))

    async with aiohttp.ClientSession() as session:
        loops = [asyncio.create_task(client_loop(session)) for _ in range(4)]
        await asyncio.sleep(0.3)
        written = time.monotonic()
        write("b")
        switched = None
        deadline = written + 5
        while switched is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            switched = next((t for t, _, backend in results if backend == "b"), None)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*loops)
    assert switched is not None, "the new spec was never applied"
    assert switched - written < 1.0, f"reload applied after {switched - written:.2f}s"
    assert len(results) > 20
    assert all(status == 200 for _, status, _ in results), "a request failed during the reload"
    assert all(backend == "b" for started, _, backend in results if started > switched)
    assert srv.state.last is not None and srv.state.last.ok and srv.state.last.trigger == "watch"


async def test_invalid_edit_keeps_serving_and_reports_line_col(two, caplog):
    caplog.set_level(logging.INFO)
    srv, write = two
    old = srv.state.table.digest
    write("a, vllm-zz")  # unknown backend, line 9 col 13
    async with aiohttp.ClientSession() as s:
        report = None
        for _ in range(200):
            async with s.get(base(srv) + "/admin/") as r:  # loopback, no admin token: allowed
                report = (await r.json())["last_reload"]
            if report is not None:
                break
            await asyncio.sleep(0.02)
        assert report is not None and report["ok"] is False
        diag = next(d for d in report["diagnostics"] if d["severity"] == "error")
        assert (diag["line"], diag["col"]) == (9, 13) and "vllm-zz" in diag["message"]
        assert re.search(r"iir\.yaml:9:13 routes\[0\]\.to\[1\]: .*vllm-zz", diag["text"])
        async with s.post(base(srv) + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200 and r.headers["x-iir-backend"] == "a"  # the old table serves on
    assert srv.state.table.digest == old
    logged = [r for r in caplog.records if r.getMessage() == "reload"]
    assert any("iir.yaml:9:13" in str(getattr(r, "fields", {})) for r in logged), "diagnostic not logged"


async def test_deleted_spec_is_logged_and_serving_goes_on(two, caplog):
    caplog.set_level(logging.INFO)
    srv, write = two
    old = srv.state.table.digest
    srv.state.path.unlink()
    for _ in range(200):
        gone = [r for r in caplog.records if r.levelno == logging.WARNING and "is gone" in r.getMessage()]
        if gone:
            break
        await asyncio.sleep(0.02)
    assert gone and old[:12] in gone[0].getMessage()
    async with aiohttp.ClientSession() as s, s.post(base(srv) + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200 and r.headers["x-iir-backend"] == "a"
    write("b")  # re-created: reloaded
    for _ in range(200):
        if srv.state.table.digest != old:
            break
        await asyncio.sleep(0.02)
    assert srv.state.table.digest != old and srv.state.last is not None and srv.state.last.ok


async def test_restart_only_server_settings_are_reported_not_silently_ignored(two):
    srv, _write = two
    text = srv.state.path.read_text()
    srv.state.path.write_text(text.replace("version: 1\n", "version: 1\nserver: {listen: '127.0.0.1:1', workers: 2}\n"))
    report = await srv.state.reload("admin")
    assert report.ok
    warned = {d.path: d for d in report.diagnostics if d.severity == "warning"}
    assert {"server.listen", "server.workers"} <= warned.keys()
    assert "takes effect when the router restarts" in warned["server.listen"].message
    assert warned["server.listen"].line == 2
    async with aiohttp.ClientSession() as s, s.post(base(srv) + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200  # still listening where it started


async def test_yaml_syntax_error_reported_with_position(two):
    srv, _write = two
    srv.state.path.write_text("version: 1\nbackends: {a: [\n")
    report = await srv.state.reload("admin")
    assert not report.ok and next(d for d in report.diagnostics if d.severity == "error").line >= 2
    assert srv.state.table.backends.keys() == {"a", "b"}


async def test_admin_reload_endpoint(two):
    srv, _write = two
    async with aiohttp.ClientSession() as s:
        async with s.post(base(srv) + "/admin/reload") as r:
            assert r.status == 200
            body = await r.json()
        assert body["ok"] is True and body["changed"] is False and body["trigger"] == "admin"
        srv.state.path.write_text(srv.state.path.read_text().replace("to: [a]", "to: [b]"))
        async with s.post(base(srv) + "/admin/reload") as r:
            body = await r.json()
        assert body["ok"] and body["digest"] == srv.state.table.digest
        async with s.post(base(srv) + "/v1/chat/completions", json=CHAT) as r:
            assert r.headers["x-iir-backend"] == "b"


async def test_in_flight_request_finishes_on_the_table_it_started_with(upstreams, router):
    a = await upstreams(mode="slow")
    b = await upstreams()
    srv = await router(SPEC.format(a=a.url, b=b.url, target="a"))
    async with aiohttp.ClientSession() as s:
        resp = await s.post(base(srv) + "/v1/chat/completions", json={**CHAT, "stream": True})
        await resp.content.readline()
        srv.state.path.write_text(srv.state.path.read_text().replace("to: [a]", "to: [b]"))
        report = await srv.state.reload("admin")
        assert report.changed
        async with s.post(base(srv) + "/v1/chat/completions", json=CHAT) as r2:
            assert r2.headers["x-iir-backend"] == "b"
        assert resp.headers["x-iir-backend"] == "a" and not resp.content.at_eof()
        resp.close()
