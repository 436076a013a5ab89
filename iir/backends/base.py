"""The backend adapter interface: one adapter per upstream wire protocol.

An adapter turns the client's OpenAI request into the upstream's request and the upstream's
answer back into OpenAI's shapes. It does no I/O: the relay stage (iir.pipeline.relay) owns
sockets, timeouts, retries and the client response; adapters are pure byte/dict translators,
testable without a network.

Files are named ``<client>_<backend>.py`` (``openai_openai.py``, ``openai_agent.py``,
``openai_anthropic.py``, ``openai_gemini.py``) and each exposes ``ADAPTER``, an instance of a
:class:`Adapter` subclass whose ``protocol`` equals :attr:`iir.table.Backend.protocol`.
:func:`iir.backends.registry.adapter_for` finds it.

Adapters see the request through :class:`ClientRequest`, a structural view that
:class:`iir.pipeline.context.RequestContext` satisfies (backends sit below the pipeline in the
layering, so they do not import it).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import orjson

from iir.errors import BadRequestError, UpstreamError
from iir.table import Backend

__all__ = [
    "Adapter",
    "ClientRequest",
    "StreamTranslator",
    "UpstreamRequest",
    "error_message_from",
    "parse_retry_after",
    "sse_data",
    "sse_error",
]

#: Endpoints a client can call: chat/completions, completions, embeddings.
ENDPOINTS = ("chat", "completions", "embeddings")


class ClientRequest(Protocol):
    """What an adapter may read about the client's request (RequestContext has all of these)."""

    endpoint: str  # "chat" | "completions" | "embeddings"
    raw: bytes  # body exactly as received
    body: dict[str, Any]  # parsed once by the parse stage
    model: str  # model name as the client asked for it
    stream: bool
    request_id: str


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One HTTP request to send upstream. ``stream``: the upstream answers with SSE."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    stream: bool = False


@dataclass(slots=True)
class StreamTranslator(ABC):
    """Turns upstream stream bytes into OpenAI SSE bytes for the client, incrementally.

    :meth:`feed` receives whole lines only (the relay splits at the last ``\\n``; a block can
    hold many lines, always ending on a line boundary) and returns bytes to write to the client
    (possibly empty). :meth:`finish` is called once when the upstream ends cleanly and returns
    the closing bytes (``data: [DONE]\\n\\n`` for translated protocols; nothing for
    pass-through, whose upstream sent its own). ``usage`` collects token counts when seen.
    When the upstream signals an error inside the stream, set ``error`` and return the chunks
    translated before it: the relay writes them, then ends the stream with an SSE error event
    (or answers with the error if nothing reached the client yet). Raising
    :class:`UpstreamError` from ``feed`` also works, but drops that block's earlier chunks.
    """

    usage: dict[str, int] = field(default_factory=dict)
    finish_reason: str | None = None
    done: bool = False  # the upstream's end marker was seen
    error: UpstreamError | None = None  # an error the upstream sent inside the stream

    @abstractmethod
    def feed(self, block: bytes) -> list[bytes]: ...

    def finish(self) -> list[bytes]:
        return []


class Adapter(ABC):
    """Translate OpenAI requests for one upstream protocol. Stateless; one instance per process."""

    protocol: ClassVar[str]
    #: Endpoints this protocol serves; the selector skips backends that cannot serve one.
    endpoints: ClassVar[frozenset[str]] = frozenset(ENDPOINTS)

    def passthrough(self, req: ClientRequest, backend: Backend) -> bool:
        """True when upstream bytes go to the client unchanged (only ``model`` rewritten)."""
        return False

    @abstractmethod
    def build(self, req: ClientRequest, backend: Backend) -> UpstreamRequest:
        """The upstream request for ``req`` (URL, credentials, translated body)."""

    @abstractmethod
    def translate_response(self, req: ClientRequest, backend: Backend, body: bytes) -> tuple[bytes, dict[str, int]]:
        """A successful non-streamed upstream body → (OpenAI JSON bytes, usage).

        Raises :class:`UpstreamError` when the body is unreadable."""

    @abstractmethod
    def stream_translator(self, req: ClientRequest, backend: Backend) -> StreamTranslator:
        """A fresh translator for one streamed response."""

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        """An upstream error response → typed error.

        5xx, 429, 408 and 402 (the router's account is out of credits there) are retryable
        (fallback). A 400 that says the API key is wrong (xAI answers a bad key that way) is
        the router's credential failing, not the client's request: reported like a 401."""
        message = error_message_from(body) or f"HTTP {status}"
        retry_after = parse_retry_after(headers.get("retry-after"))
        seen = status
        if status == 400 and BAD_KEY_MESSAGE.search(message):
            seen = 401
        if seen in (401, 403):
            text = f"upstream rejected the router's credentials (HTTP {status}): {message}"
        else:
            text = f"upstream returned HTTP {status}: {message}"
        err = UpstreamError(text, upstream_status=seen, retryable=status >= 500 or status in (402, 408, 429))
        err.retry_after = retry_after  # type: ignore[attr-defined]
        return err

    def unsupported(self, req: ClientRequest, backend: Backend) -> BadRequestError:
        return BadRequestError(f"backend {backend.name!r} ({self.protocol}) does not serve /{req.endpoint}")


# -- helpers shared by adapters -------------------------------------------------------------

#: An error message saying the API key is wrong ("Incorrect API key provided", "API key not valid", ...).
BAD_KEY_MESSAGE = re.compile(r"(incorrect|invalid|wrong|missing)\W+api[ _-]?key|api[ _-]?key\W+(is\W+)?(not valid|invalid)",
                             re.IGNORECASE)


def error_message_from(body: bytes) -> str:
    """The message of an upstream error body, whatever its shape (OpenAI, Anthropic, plain)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if isinstance(msg, str):
                return msg
        if isinstance(err, str):
            return err
        detail = data.get("detail") or data.get("message")
        if isinstance(detail, str):
            return detail
    return body[:300].decode("utf-8", "replace").strip()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form only); None if absent/bad."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def sse_data(obj: Any) -> bytes:
    """One SSE event ``data: <json>\\n\\n``."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_error(message: str, *, type_: str = "upstream_error", code: str | None = "upstream_error") -> bytes:
    """An SSE error event the official openai SDK raises as ``APIError`` mid-stream."""
    return sse_data({"error": {"message": message, "type": type_, "param": None, "code": code}})
