"""Incremental Server-Sent Events decoder for upstream streams (any chunking of the bytes).

Follows the WHATWG event-stream rules that providers rely on: ``event:`` names the event,
``data:`` lines are joined with newlines, a blank line dispatches, ``:`` starts a comment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SSEDecoder", "SSEEvent"]

_MAX_PENDING = 16 * 1024 * 1024  # an event larger than this is not a sane upstream


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str  # "" when the stream gave no `event:` line
    data: str


@dataclass(slots=True)
class SSEDecoder:
    """Feed raw bytes, get complete events. ``close()`` flushes an unterminated last event."""

    _buf: bytes = b""
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buf += chunk
        if len(self._buf) > _MAX_PENDING:
            raise ValueError("server-sent event exceeds 16 MiB without a line break")
        out: list[SSEEvent] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            raw, self._buf = self._buf[:nl], self._buf[nl + 1:]
            self._line(raw.rstrip(b"\r").decode("utf-8", errors="replace"), out)
        return out

    def close(self) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self._buf:
            raw, self._buf = self._buf, b""
            self._line(raw.rstrip(b"\r").decode("utf-8", errors="replace"), out)
        self._line("", out)
        return out

    def _line(self, line: str, out: list[SSEEvent]) -> None:
        if not line:
            if self._data or self._event:
                out.append(SSEEvent(self._event, "\n".join(self._data)))
            self._event, self._data = "", []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
