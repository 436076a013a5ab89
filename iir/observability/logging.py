"""Structured logging: one JSON object per line (default) or human-readable text.

:func:`configure_logging` is called once at start-up (and again when a reload changes the log
settings). It installs iir's handlers on the root logger: stdout always, plus an optional file
rotated daily at UTC midnight that keeps ``retention`` old files. The level comes from the
compiled :class:`~iir.table.ServerSettings` (``LOG_LEVEL`` already overrides the spec there).

Events are plain log records whose message is the event name (``request``, ``startup``,
``reload``...) and whose structured fields ride in ``record.fields``. Use :func:`emit`; it does
no work at all when the level is disabled. Secrets are never passed as fields (keys are logged by
name only); as a second line of defence each handler can be given the secret values it must
never write (:func:`set_secrets`) and masks them in the formatted line.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any
from urllib.parse import urlsplit

import orjson

from iir.errors import Diagnostic
from iir.table import RoutingTable, ServerSettings

__all__ = [
    "LOGGER_NAME",
    "BufferedStreamHandler",
    "EventRecord",
    "JsonFormatter",
    "TextFormatter",
    "collect_secrets",
    "configure_logging",
    "emit",
    "flush_handlers",
    "log_agent_registered",
    "log_heartbeat_expired",
    "log_reload",
    "log_shutdown",
    "log_startup",
    "parse_level",
    "set_secrets",
]

LOGGER_NAME = "iir"
_MASK = "***"
_OWNED = "_iir_handler"  # attribute marking the handlers configure_logging installed
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}
_MIN_SECRET_LEN = 6  # shorter values would mask ordinary words


def parse_level(name: str) -> int:
    """``"info"`` → ``logging.INFO``; unknown names fall back to INFO (the compiler validated them)."""
    return _LEVELS.get(name.strip().lower(), logging.INFO)


# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "fields"}


def _fields(record: logging.LogRecord) -> dict[str, Any] | None:
    """The structured fields of a record: ``emit``'s, else whatever ``extra=`` added."""
    fields = getattr(record, "fields", None)
    if fields is not None:
        return fields  # type: ignore[no-any-return]
    extra = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
    return extra or None


class _Masking(logging.Formatter):
    """Base formatter: masks configured secret values in the finished line."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()
        self._second = -1
        self._prefix = ""

    def stamp(self, created: float) -> str:
        """``2026-11-27T11:20:00.123Z``; the part up to the second is formatted once per second."""
        second = int(created)
        if second != self._second:
            t = time.gmtime(second)
            self._prefix = (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
                            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.")
            self._second = second
        return f"{self._prefix}{int((created - second) * 1000):03d}Z"

    def mask(self, line: str) -> str:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, _MASK)
        return line

    def exception_text(self, record: logging.LogRecord) -> str | None:
        if record.exc_info:
            return self.formatException(record.exc_info)
        return record.exc_text or None


class JsonFormatter(_Masking):
    """``{"ts", "level", "logger", "event", ...fields}`` serialised with orjson, one per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": self.stamp(record.created), "level": record.levelname.lower(),
                               "logger": record.name, "event": record.getMessage()}
        fields = _fields(record)
        if fields:
            doc.update(fields)
        exc = self.exception_text(record)
        if exc:
            doc["exception"] = exc
        return self.mask(orjson.dumps(doc, default=str).decode())


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return ",".join(_text_value(v) for v in value) or "-"
    if isinstance(value, dict):
        return ":".join(_text_value(v) for v in value.values())
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


class TextFormatter(_Masking):
    """``2026-11-27T11:20:00.123Z INFO  request request_id=... status=200 latency_ms=12.3``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [self.stamp(record.created), f"{record.levelname:<7}", record.getMessage()]
        fields = _fields(record)
        if fields:
            parts.extend(f"{k}={_text_value(v)}" for k, v in fields.items())
        line = " ".join(parts)
        exc = self.exception_text(record)
        if exc:
            line = f"{line}\n{exc}"
        return self.mask(line)


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes lines in batches instead of one ``write``+``flush`` per record.

    The batch goes out when it reaches ``capacity`` characters, when a record at ``flush_level``
    or above arrives, when the oldest buffered line is ``max_delay`` seconds old at the next
    record, and whenever :meth:`flush` is called (the server calls :func:`flush_handlers` every
    few hundred milliseconds, and ``logging.shutdown`` at exit)."""

    def __init__(self, stream: IO[str], *, capacity: int = 64 * 1024, flush_level: int = logging.WARNING,
                 max_delay: float = 0.5) -> None:
        super().__init__(stream)
        self.capacity = capacity
        self.flush_level = flush_level
        self.max_delay = max_delay
        self._lines: list[str] = []
        self._size = 0
        self._oldest = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging's contract: report through handleError, never raise
            self.handleError(record)
            return
        if not self._lines:
            self._oldest = record.created
        self._lines.append(line)
        self._size += len(line) + 1
        if (record.levelno >= self.flush_level or self._size >= self.capacity
                or record.created - self._oldest >= self.max_delay):
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._lines:
                text = "\n".join(self._lines) + "\n"
                self._lines.clear()
                self._size = 0
                self.stream.write(text)
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()
        finally:
            self.release()


def flush_handlers() -> None:
    """Write out whatever iir's handlers hold (called periodically by the server)."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, _OWNED, False):
            handler.flush()


def _file_path(path: str, worker: int | None) -> str:
    """Each worker process writes its own file: rotation is not safe across processes."""
    if worker is None:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.w{worker}{ext}"


def configure_logging(server: ServerSettings, *, stream: IO[str] | None = None,
                      worker: int | None = None, secrets: Iterable[str] = (),
                      buffered: bool | None = None) -> logging.Logger:
    """Install iir's handlers (replacing any it installed before) and return the ``iir`` logger.

    ``stream`` defaults to stdout. ``worker`` (the worker index with ``--workers N``) gives each
    process its own log file. ``secrets`` are values no handler may ever write. ``buffered``
    (default: when writing to a stdout that is not a terminal) batches lines, see
    :class:`BufferedStreamHandler`.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OWNED, False)]:
        root.removeHandler(handler)
        handler.close()
    formatter_cls = TextFormatter if server.log_format == "text" else JsonFormatter
    out = stream if stream is not None else sys.stdout
    if buffered is None:
        buffered = stream is None and not out.isatty()
    handlers: list[logging.Handler] = [BufferedStreamHandler(out) if buffered else logging.StreamHandler(out)]
    if server.log_file:
        path = _file_path(server.log_file, worker)
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        handlers.append(logging.handlers.TimedRotatingFileHandler(
            path, when="midnight", utc=True, backupCount=server.log_retention, encoding="utf-8", delay=True))
    for handler in handlers:
        handler.setFormatter(formatter_cls())
        setattr(handler, _OWNED, True)
        root.addHandler(handler)
    # Our formatters never print thread or process names: don't collect them for every record
    # (the optimisation the logging HOWTO recommends).
    logging.logThreads = False
    logging.logMultiprocessing = False
    level = parse_level(server.log_level)
    root.setLevel(max(level, logging.INFO))  # debug is for iir's own loggers; libraries stay at info
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    # One structured line per request replaces aiohttp's access log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    set_secrets(secrets)
    return logger


def set_secrets(secrets: Iterable[str]) -> None:
    """Tell iir's handlers which values to mask (client keys, provider credentials, tokens)."""
    values = tuple(sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True))
    for handler in logging.getLogger().handlers:
        if getattr(handler, _OWNED, False) and isinstance(handler.formatter, _Masking):
            handler.formatter.secrets = values


_RECORD_DEFAULTS = {k: v for k, v in logging.LogRecord("", 0, "", 0, "", (), None).__dict__.items()}
_RECORD_DEFAULTS.update(pathname="", filename="", module="", funcName="", lineno=0, thread=None, threadName=None,
                        process=None, processName=None, taskName=None, relativeCreated=0.0)


class EventRecord(logging.LogRecord):
    """A log record for a structured event, built in a fraction of a ``LogRecord``'s cost.

    Events carry their own context, so there is no caller lookup, thread or process capture;
    every standard attribute is still present (some formatters, pytest's among them, read the
    record's ``__dict__``)."""

    def __init__(self, name: str, level: int, event: str, fields: Mapping[str, Any]) -> None:
        # LogRecord.__init__ is skipped on purpose: it is the expensive part.
        d = self.__dict__
        d.update(_RECORD_DEFAULTS)
        created = time.time()
        d.update(name=name, levelno=level, levelname=logging.getLevelName(level), msg=event, fields=fields,
                 created=created, msecs=(created % 1) * 1000)


def emit(logger: logging.Logger, level: int, event: str, fields: Mapping[str, Any]) -> None:
    """Log one structured event. Callers building costly fields check ``isEnabledFor`` first."""
    if logger.isEnabledFor(level):
        logger.handle(EventRecord(logger.name, level, event, fields))


# -- lifecycle events ----------------------------------------------------------------------------

def log_startup(logger: logging.Logger, *, version: str, listen: str, workers: int, spec: str,
                digest: str, backends: Mapping[str, str], open_auth: bool,
                worker: int | None = None) -> None:
    """``startup``: what is being served. ``backends`` maps name → state (``ok``/``unconfigured: ...``)."""
    level = logging.WARNING if open_auth and not listen.startswith(("127.", "localhost", "[::1]")) \
        else logging.INFO
    emit(logger, level, "startup", {"version": version, "listen": listen, "workers": workers,
                                    "worker": worker, "spec": spec, "digest": digest,
                                    "backends": dict(backends), "auth": "open" if open_auth else "keys"})


def log_shutdown(logger: logging.Logger, *, drained: int, abandoned: int, seconds: float) -> None:
    emit(logger, logging.INFO, "shutdown", {"drained": drained, "abandoned": abandoned,
                                            "seconds": round(seconds, 3)})


def log_reload(logger: logging.Logger, *, ok: bool, seconds: float, spec: str, digest: str | None,
               diagnostics: Iterable[Diagnostic] = (), trigger: str = "watch") -> None:
    """``reload``: success (INFO, with any warnings) or failure (ERROR, every diagnostic with file:line:col)."""
    diags = list(diagnostics)
    fields: dict[str, Any] = {"result": "success" if ok else "failure", "trigger": trigger, "spec": spec,
                              "digest": digest, "seconds": round(seconds, 4),
                              "diagnostics": [str(d) for d in diags]}
    emit(logger, logging.INFO if ok else logging.ERROR, "reload", fields)


def log_agent_registered(logger: logging.Logger, *, agent: str, url: str, models: Iterable[str],
                         renewed: bool = False) -> None:
    emit(logger, logging.INFO, "agent_registered", {"agent": agent, "url": url, "models": list(models),
                                                    "renewed": renewed})


def log_heartbeat_expired(logger: logging.Logger, *, agent: str, last_seen_seconds_ago: float,
                          timeout: float) -> None:
    emit(logger, logging.WARNING, "agent_heartbeat_expired",
         {"agent": agent, "last_seen_seconds_ago": round(last_seen_seconds_ago, 1), "timeout": timeout})


_SECRET_ENV_HINTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


def collect_secrets(table: RoutingTable | None, env: Mapping[str, str]) -> set[str]:
    """Values the log must never contain: provider credentials, the Redis password, and every
    environment value whose name looks secret (``IIR_KEY_*``, ``EXTERNAL_*_KEY``, ``*_TOKEN``...)."""
    found = {v for k, v in env.items() if v and any(h in k.upper() for h in _SECRET_ENV_HINTS)}
    if table is not None:
        found.update(b.api_key for b in table.backends.values() if b.api_key)
        found.update(v for _, v in (h for b in table.backends.values() for h in b.headers)
                     if v and len(v) >= 16)
        if table.state.redis_url:
            password = urlsplit(table.state.redis_url).password
            if password:
                found.add(password)
    return found
