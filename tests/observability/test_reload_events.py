"""Reloads through the real router: one structured ``reload`` event each (diagnostics with
file:line:col on failure), iir_config_reloads_total by result, and the spec hash info metric."""

from __future__ import annotations

import io
from pathlib import Path

import aiohttp
import orjson
import pytest

from iir.compile.build import build_table
from iir.observability.logging import configure_logging
from iir.server.run import start

from .promtext import value
from .test_router_traffic import ENV, write_spec
from .upstream import upstream

pytestmark = pytest.mark.usefixtures("restore_logging")


async def test_reload_events_and_metrics(tmp_path: Path) -> None:
    async with upstream() as up:
        spec = write_spec(tmp_path, up.url)
        env = {**ENV, "SQLITE_DB_PATH": str(tmp_path / "iir.db")}
        out = io.StringIO()
        configure_logging(build_table(spec, env).table.server, stream=out)
        server = await start(spec, host="127.0.0.1", port=0, env=env, watch=False)
        try:
            first = server.state.table.digest
            good_text = spec.read_text()
            spec.write_text(good_text.replace("to: [bad]}", "to: [no-such-backend]}"))
            failed = await server.state.reload("admin")
            assert not failed.ok and server.state.table.digest == first
            spec.write_text(good_text.replace("name: direct", "name: direct-2"))
            applied = await server.state.reload("sighup")
            assert applied.ok and applied.changed
            second = server.state.table.digest
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.port}/metrics") as r:
                text = await r.text()
        finally:
            await server.stop()
    docs = [orjson.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    reloads = [d for d in docs if d["event"] == "reload"]
    assert [(d["result"], d["trigger"], d["level"]) for d in reloads] == [
        ("failure", "admin", "error"), ("success", "sighup", "info")]
    bad = reloads[0]
    assert bad["digest"] is None and bad["spec"] == str(spec)
    assert any(d.startswith(f"{spec}:") and "no-such-backend" in d for d in bad["diagnostics"]), bad
    line_col = bad["diagnostics"][0].split(" ", 1)[0].rsplit(":", 2)
    assert line_col[1].isdigit() and line_col[2].isdigit()
    assert reloads[1]["digest"] == second != first
    assert not [d for d in docs if "reload" in d["event"] and d["event"] != "reload"], "reload logged twice"
    assert value(text, "iir_config_reloads_total", result="failure") == 1
    assert value(text, "iir_config_reloads_total", result="success") == 2  # start-up + sighup
    assert value(text, "iir_spec_info", digest=second) == 1
    assert value(text, "iir_spec_info", digest=first) == 0
