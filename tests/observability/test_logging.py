"""Structured logging: formats, levels, the daily file with retention, secret masking, lifecycle events."""

from __future__ import annotations

import io
import logging
import logging.handlers
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from iir.compile.build import build_text
from iir.errors import Diagnostic
from iir.observability.logging import (
    collect_secrets,
    configure_logging,
    emit,
    log_agent_registered,
    log_heartbeat_expired,
    log_reload,
    log_startup,
)
from iir.table import ServerSettings

from .conftest import CLIENT_KEY, SPEC

pytestmark = pytest.mark.usefixtures("restore_logging")


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_json_is_default_one_object_per_line() -> None:
    out = io.StringIO()
    log = configure_logging(ServerSettings(), stream=out)
    emit(log, logging.INFO, "request", {"request_id": "r1", "status": 200, "latency_ms": 1.5, "key": None})
    emit(log, logging.INFO, "request", {"request_id": "r2", "status": 404, "attempts": []})
    docs = [orjson.loads(line) for line in _lines(out)]
    assert [d["request_id"] for d in docs] == ["r1", "r2"]
    assert docs[0]["event"] == "request" and docs[0]["level"] == "info" and docs[0]["logger"] == "iir"
    assert docs[0]["status"] == 200 and docs[0]["latency_ms"] == 1.5 and docs[0]["key"] is None
    assert docs[0]["ts"].endswith("Z") and "T" in docs[0]["ts"]


def test_text_format_is_human_readable() -> None:
    out = io.StringIO()
    log = configure_logging(ServerSettings(log_format="text"), stream=out)
    emit(log, logging.INFO, "request", {"request_id": "r1", "model": "tiny", "status": 200, "latency_ms": 12.34,
                                        "key": None, "attempts": [{"backend": "a", "status": 200}]})
    (line,) = _lines(out)
    assert " INFO    request request_id=r1 model=tiny status=200 latency_ms=12.3 key=- attempts=a:200" in line
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(line)


def test_level_filters_and_no_formatting_work_below_it() -> None:
    class Costly:
        formatted = 0

        def __str__(self) -> str:
            Costly.formatted += 1
            return "costly"

    out = io.StringIO()
    log = configure_logging(ServerSettings(log_level="warning"), stream=out)
    emit(log, logging.INFO, "request", {"x": Costly()})
    emit(log, logging.DEBUG, "request", {"x": Costly()})
    assert _lines(out) == [] and Costly.formatted == 0
    emit(log, logging.WARNING, "request", {"x": Costly()})
    assert Costly.formatted == 1 and orjson.loads(_lines(out)[0])["x"] == "costly"


def test_log_level_env_overrides_the_spec() -> None:
    spec = SPEC.replace("version: 1", "version: 1\nserver: {log: {level: error, format: text}}")
    env = {"IIR_KEY_CI": CLIENT_KEY}
    assert build_text(spec, "iir.yaml", env).table.server.log_level == "error"
    settings = build_text(spec, "iir.yaml", {**env, "LOG_LEVEL": "DEBUG"}).table.server
    out = io.StringIO()
    log = configure_logging(settings, stream=out)
    assert log.isEnabledFor(logging.DEBUG)
    emit(log, logging.DEBUG, "probe", {"a": 1})
    assert "DEBUG" in out.getvalue() and "probe a=1" in out.getvalue()


def test_reconfigure_replaces_handlers_instead_of_adding() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(ServerSettings(), stream=first)
    log = configure_logging(ServerSettings(), stream=second)
    emit(log, logging.INFO, "once", {})
    assert first.getvalue() == "" and len(_lines(second)) == 1


def test_file_is_written_rotated_daily_and_retention_kept(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "iir.log"
    out = io.StringIO()
    log = configure_logging(ServerSettings(log_file=str(path), log_retention=2), stream=out)
    (handler,) = [h for h in logging.getLogger().handlers
                  if isinstance(h, logging.handlers.TimedRotatingFileHandler) and h.baseFilename == str(path)]
    assert handler.when == "MIDNIGHT" and handler.utc and handler.backupCount == 2
    emit(log, logging.INFO, "before", {"n": 1})
    handler.flush()
    assert orjson.loads(path.read_text().splitlines()[0])["event"] == "before"
    assert "before" in out.getvalue()  # stdout is always written too
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        (tmp_path / "logs" / f"iir.log.{day}").write_text("old\n")
    handler.doRollover()
    emit(log, logging.INFO, "after", {"n": 2})
    handler.flush()
    rotated = sorted(p.name for p in path.parent.iterdir() if p.name != "iir.log")
    assert len(rotated) == 2 and "iir.log.2026-01-01" not in rotated
    assert orjson.loads(path.read_text().splitlines()[0])["event"] == "after"


def test_each_worker_writes_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "iir.log"
    log = configure_logging(ServerSettings(log_file=str(path)), stream=io.StringIO(), worker=1)
    emit(log, logging.INFO, "hello", {})
    logging.getLogger().handlers[-1].flush()
    assert (tmp_path / "iir.w1.log").exists() and not path.exists()


def test_secret_values_are_masked_even_if_passed_by_mistake() -> None:
    out = io.StringIO()
    log = configure_logging(ServerSettings(), stream=out, secrets=[CLIENT_KEY, "short"])
    emit(log, logging.INFO, "oops", {"header": f"Bearer {CLIENT_KEY}", "word": "short"})
    logging.getLogger("iir.other").error("failed with %s", CLIENT_KEY)
    text = out.getvalue()
    assert CLIENT_KEY not in text and text.count("***") == 2
    assert '"word":"short"' in text  # values under 6 characters are not treated as secrets


def test_collect_secrets_from_table_and_env(table) -> None:
    env = {"IIR_KEY_CI": CLIENT_KEY, "EXTERNAL_OPENAI_KEY": "sk-openai-abcdef", "HOME": "/root",
           "IIR_ADMIN_TOKEN": "admin-token-xyz", "REDIS_URL": "redis://:hunter2pw@127.0.0.1:1/0"}
    spec = SPEC + "\nstate: {store: redis, redis_url: \"${REDIS_URL}\"}\n"
    t = build_text(spec, "iir.yaml", env).table
    found = collect_secrets(t, env)
    assert {CLIENT_KEY, "sk-openai-abcdef", "admin-token-xyz", "hunter2pw"} <= found
    assert "/root" not in found
    with_key = replace(t, backends={**t.backends, "openai": replace(t.backends["local-a"], api_key="sk-from-table-1")})
    assert "sk-from-table-1" in collect_secrets(with_key, {})


def test_lifecycle_events() -> None:
    out = io.StringIO()
    log = configure_logging(ServerSettings(), stream=out)
    log_startup(log, version="0.1.0", listen="0.0.0.0:8000", workers=2, spec="iir.yaml", digest="abc",
                backends={"a": "ok", "openai": "unconfigured: EXTERNAL_OPENAI_KEY not set"}, open_auth=True)
    diag = Diagnostic("iir.yaml", 42, 7, "routes[3].to", "unknown backend 'vllm-a'")
    log_reload(log, ok=False, seconds=0.0123, spec="iir.yaml", digest=None, diagnostics=[diag])
    log_reload(log, ok=True, seconds=0.01, spec="iir.yaml", digest="def", trigger="sighup")
    log_agent_registered(log, agent="laptop", url="http://127.0.0.1:5000", models=["tiny"])
    log_heartbeat_expired(log, agent="laptop", last_seen_seconds_ago=31.04, timeout=30.0)
    start, failed, ok, reg, expired = (orjson.loads(line) for line in _lines(out))
    assert start["event"] == "startup" and start["level"] == "warning" and start["auth"] == "open"
    assert start["backends"]["openai"].startswith("unconfigured")
    assert failed["level"] == "error" and failed["result"] == "failure"
    assert failed["diagnostics"] == ["iir.yaml:42:7 routes[3].to: unknown backend 'vllm-a'"]
    assert ok["result"] == "success" and ok["digest"] == "def" and ok["trigger"] == "sighup"
    assert reg["event"] == "agent_registered" and reg["models"] == ["tiny"]
    assert expired["event"] == "agent_heartbeat_expired" and expired["level"] == "warning"
    assert expired["last_seen_seconds_ago"] == 31.0


def test_does_not_touch_foreign_handlers() -> None:
    foreign = logging.StreamHandler(io.StringIO())
    root = logging.getLogger()
    root.addHandler(foreign)
    try:
        configure_logging(ServerSettings(), stream=io.StringIO())
        assert foreign in root.handlers
    finally:
        root.removeHandler(foreign)


def test_buffered_handler_batches_and_flushes_on_warning_capacity_and_demand() -> None:
    from iir.observability.logging import BufferedStreamHandler, flush_handlers

    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, s: str) -> int:
            writes.append(s)
            return super().write(s)

    out = Recording()
    log = configure_logging(ServerSettings(), stream=out, buffered=True)
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, BufferedStreamHandler)]
    for i in range(3):
        emit(log, logging.INFO, "request", {"n": i})
    assert out.getvalue() == ""  # held back
    emit(log, logging.WARNING, "request", {"n": 3})  # a warning goes out at once, with what came before
    assert len(writes) == 1 and [orjson.loads(x)["n"] for x in _lines(out)] == [0, 1, 2, 3]
    emit(log, logging.INFO, "request", {"n": 4})
    flush_handlers()  # the server's periodic flush
    assert len(writes) == 2 and orjson.loads(_lines(out)[-1])["n"] == 4
    handler.capacity = 500  # lines here are ~150 characters: one batch of four goes out
    for i in range(5, 10):
        emit(log, logging.INFO, "request", {"n": i, "pad": "x" * 60})
    assert len(writes) == 3  # the capacity was reached once
    flush_handlers()
    assert [orjson.loads(x)["n"] for x in _lines(out)] == list(range(10))


def test_stdout_is_buffered_only_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from iir.observability.logging import BufferedStreamHandler

    class Pipe(io.StringIO):
        def isatty(self) -> bool:
            return False

    class Tty(Pipe):
        def isatty(self) -> bool:
            return True

    for stream, expect in ((Pipe(), True), (Tty(), False)):
        monkeypatch.setattr("sys.stdout", stream)
        configure_logging(ServerSettings())
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_iir_handler", False)]
        assert isinstance(ours[0], BufferedStreamHandler) is expect


def test_plain_extra_fields_are_structured_too() -> None:
    out = io.StringIO()
    configure_logging(ServerSettings(), stream=out)
    logging.getLogger("iir.agents").info("agent deregistered", extra={"agent": "a1", "known": True})
    logging.getLogger("iir.other").warning("plain %s", "message")
    first, second = (orjson.loads(line) for line in _lines(out))
    assert (first["event"], first["agent"], first["known"]) == ("agent deregistered", "a1", True)
    assert second["event"] == "plain message" and "agent" not in second


def test_event_records_work_with_any_formatter() -> None:
    from iir.observability.logging import EventRecord

    record = EventRecord("iir.request", logging.INFO, "request", {"status": 200})
    plain = logging.Formatter("%(asctime)s %(levelname)s %(name)s:%(filename)s:%(lineno)d %(process)s %(message)s")
    assert plain.format(record).endswith("INFO iir.request::0 None request")
    assert logging.Formatter("{levelname} {message}", style="{").format(record) == "INFO request"


def test_debug_is_for_iir_loggers_only() -> None:
    out = io.StringIO()
    configure_logging(ServerSettings(log_level="debug"), stream=out)
    logging.getLogger("iir.pipeline").debug("ours")
    logging.getLogger("watchfiles.main").debug("theirs")
    logging.getLogger("watchfiles.main").info("theirs at info")
    events = [orjson.loads(line)["event"] for line in _lines(out)]
    assert events == ["ours", "theirs at info"]
