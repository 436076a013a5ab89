"""OpenAI client → OpenAI-compatible upstream (openai, vLLM, llm-d, OpenRouter, Grok, Venice,
any ``openai-compatible`` URL): pass-through.

The request body goes upstream as received (re-serialised only when ``model_map`` renames
the model); response bytes come back unchanged except the ``model`` field, which is set to
the name the client asked for. Streams are rewritten line block by line block with one
precompiled regular expression; nothing else in a chunk is parsed unless it carries usage.
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


def _usage_of(data: object) -> dict[str, int]:
    if isinstance(data, dict):
        usage = data.get("usage")
        if isinstance(usage, dict):
            return {k: v for k, v in usage.items() if isinstance(v, int) and k.endswith("_tokens")}
    return {}


@dataclass(slots=True)
class PassthroughStream(StreamTranslator):
    """Forwards upstream SSE unchanged except ``"model"``; notes usage and the end marker."""

    replacement: bytes = b""

    def feed(self, block: bytes) -> list[bytes]:
        out = _MODEL_FIELD.sub(self.replacement, block)
        if b'"usage"' in block:
            self._scan_usage(block)
        if _DONE in block:
            self.done = True
        return [out]

    def _scan_usage(self, block: bytes) -> None:
        for line in block.split(b"\n"):
            if line.startswith(b"data:") and b'"usage"' in line:
                try:
                    usage = _usage_of(orjson.loads(line[5:]))
                except orjson.JSONDecodeError:
                    continue
                if usage:
                    self.usage = usage


class OpenAIAdapter(Adapter):
    protocol = "openai"

    def passthrough(self, req: ClientRequest, backend: Backend) -> bool:
        return True

    def build(self, req: ClientRequest, backend: Backend) -> UpstreamRequest:
        upstream_model = backend.upstream_model(req.model)
        body = req.raw if upstream_model == req.model else orjson.dumps({**req.body, "model": upstream_model})
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
        return PassthroughStream(replacement=replacement.replace(b"\\", b"\\\\"))  # re.sub template


ADAPTER = OpenAIAdapter()
