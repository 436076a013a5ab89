"""OpenAI client → OpenAI-compatible upstream (openai, vLLM, llm-d, OpenRouter, Grok, Venice,
any ``openai-compatible`` URL): pass-through.

The request body goes upstream as received (re-serialised only when ``model_map`` renames
the model); response bytes come back unchanged except the ``model`` field, which is set to
the name the client asked for. Streams are rewritten line block by line block with one
precompiled regular expression; nothing else in a chunk is parsed unless it carries usage.

Two exceptions to byte pass-through, both on streams:

* Usage. A client that streams without ``stream_options.include_usage`` gets no usage from an
  OpenAI-compatible server, so limits and logs would never see its completion tokens. Unless the
  backend says ``stream_usage: false``, the router asks for it anyway (``"stream_options":
  {"include_usage": true}`` spliced into the client's bytes) and drops the extra usage-only chunk
  (``"choices": []`` with ``usage``) from what that client receives, after noting the usage.
* Keep-alive comments. SSE comment lines (``: OPENROUTER PROCESSING``) that arrive before the
  first ``data:`` line are dropped: they are not an answer, so they must not count as the first
  byte (which would end fallback). Comments after the first event pass through unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from iir.backends.base import Adapter, ClientRequest, StreamTranslator, UpstreamRequest
from iir.errors import UpstreamError
from iir.table import Backend

__all__ = ["ADAPTER", "OpenAIAdapter"]

_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
# "model": "<any JSON string>" — cannot match inside string content, where quotes are escaped.
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_DONE = b"data: [DONE]"
# a usage *object* (OpenAI adds "usage": null to every chunk once include_usage is on)
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_ASK_USAGE = b'"stream_options":{"include_usage":true},'
_USAGE_ENDPOINTS = frozenset({"chat", "completions"})


def _client_wants_usage(body: dict[str, object]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def _adds_usage(req: ClientRequest, backend: Backend) -> bool:
    """True when the router asks upstream for stream usage the client did not ask for."""
    return (req.stream and backend.stream_usage and req.endpoint in _USAGE_ENDPOINTS
            and not _client_wants_usage(req.body))


def _comment_free(block: bytes) -> bytes:
    """The lines of ``block`` that are neither SSE comments nor blank (each with its newline)."""
    return b"".join(line + b"\n" for line in block.split(b"\n")
                    if line.strip() and not line.startswith(b":"))


def _error_event(block: bytes, backend: str) -> UpstreamError | None:
    """The upstream's error when its first event is one (OpenRouter, after keep-alive comments,
    reports a failure as a data event with a top-level ``error``): nothing reached the client
    yet, so the relay may still fall back."""
    for line in block.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            data = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return None
        err = data.get("error") if isinstance(data, dict) else None
        if not err:
            return None
        message = err.get("message") if isinstance(err, dict) else err
        code = err.get("code") if isinstance(err, dict) else None
        refused = isinstance(code, int) and 400 <= code < 500 and code not in (402, 408, 429)
        return UpstreamError(f"backend {backend!r} answered its stream with an error: {message}",
                             upstream_status=code if isinstance(code, int) else None, retryable=not refused)
    return None


def _usage_of(data: object) -> dict[str, int]:
    if isinstance(data, dict):
        usage = data.get("usage")
        if isinstance(usage, dict):
            return {k: v for k, v in usage.items() if isinstance(v, int) and k.endswith("_tokens")}
    return {}


@dataclass(slots=True)
class PassthroughStream(StreamTranslator):
    """Forwards upstream SSE unchanged except ``"model"``; notes usage and the end marker.

    ``strip_usage``: the router asked for usage the client did not, so usage-only chunks are
    noted and dropped. Until the first ``data:`` line, comment and blank lines are dropped and
    any other line (``event:``, ``id:``) is held and sent with that first event; a first event
    that is an error becomes :attr:`error` (nothing sent: the relay may fall back)."""

    replacement: bytes = b""
    backend: str = ""
    strip_usage: bool = False
    started: bool = False  # a data line has been seen
    held: bytes = b""
    _skip_blank: bool = False  # the blank line ending a dropped usage event is still to come

    def feed(self, block: bytes) -> list[bytes]:
        if not self.started:
            if block.startswith(b"data:"):
                at = 0
            else:
                at = block.find(b"\ndata:") + 1
                if at == 0:  # keep-alive comments only: not the first byte
                    self.held += _comment_free(block)
                    return []
            self.started = True
            block, self.held = self.held + _comment_free(block[:at]) + block[at:], b""
            if b'"error"' in block:
                self.error = _error_event(block, self.backend)
                if self.error is not None:
                    return []
        if self._skip_blank:
            self._skip_blank = False
            block = block[2:] if block.startswith(b"\r\n") else block[1:] if block.startswith(b"\n") else block
        if b'"usage"' in block and _USAGE_OBJECT.search(block):
            block = self._take_usage(block)
        if _DONE in block:
            self.done = True
        return [_MODEL_FIELD.sub(self.replacement, block)] if block else []

    def _take_usage(self, block: bytes) -> bytes:
        """Note the usage in ``block``; without ``strip_usage`` the block is returned as is."""
        lines = block.split(b"\n")
        kept: list[bytes] = []
        for line in lines[:-1]:  # the relay hands whole lines: the last element is empty
            if self._skip_blank:
                self._skip_blank = False
                if not line.strip():
                    continue
            if line.startswith(b"data:") and _USAGE_OBJECT.search(line):
                try:
                    data = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    data = None
                usage = _usage_of(data)
                if usage:
                    self.usage = usage
                    if self.strip_usage and isinstance(data, dict) and data.get("choices") == []:
                        self._skip_blank = True
                        continue
            kept.append(line)
        if not self.strip_usage:
            return block
        return b"".join(line + b"\n" for line in kept) + lines[-1]


class OpenAIAdapter(Adapter):
    protocol = "openai"

    def passthrough(self, req: ClientRequest, backend: Backend) -> bool:
        return True

    def build(self, req: ClientRequest, backend: Backend) -> UpstreamRequest:
        upstream_model = backend.upstream_model(req.model)
        ask_usage = _adds_usage(req, backend)
        if upstream_model != req.model or (ask_usage and "stream_options" in req.body):
            extra: dict[str, object] = {"model": upstream_model}
            if ask_usage:
                opts = req.body.get("stream_options")
                extra["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
            body = orjson.dumps({**req.body, **extra})
        elif ask_usage:  # the client's bytes with one member spliced in after the opening brace
            at = req.raw.index(b"{") + 1
            body = req.raw[:at] + _ASK_USAGE + req.raw[at:]
        else:
            body = req.raw
        headers = {"content-type": "application/json", "x-request-id": req.request_id}
        if req.stream:
            headers["accept"] = "text/event-stream"
        headers.update(backend.headers)
        if backend.api_key:
            headers["authorization"] = f"Bearer {backend.api_key}"
        return UpstreamRequest("POST", backend.base_url + _PATHS[req.endpoint], headers, body, req.stream)

    def translate_response(self, req: ClientRequest, backend: Backend, body: bytes) -> tuple[bytes, dict[str, int]]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"backend {backend.name!r} returned a body that is not JSON",
                                retryable=False) from None
        if not isinstance(data, dict):
            raise UpstreamError(f"backend {backend.name!r} returned JSON that is not an object")
        if data.get("model", req.model) != req.model:
            data["model"] = req.model
            body = orjson.dumps(data)
        return body, _usage_of(data)

    def stream_translator(self, req: ClientRequest, backend: Backend) -> StreamTranslator:
        replacement = b'"model":' + orjson.dumps(req.model)
        return PassthroughStream(replacement=replacement.replace(b"\\", b"\\\\"),  # re.sub template
                                 backend=backend.name, strip_usage=_adds_usage(req, backend))


ADAPTER = OpenAIAdapter()
