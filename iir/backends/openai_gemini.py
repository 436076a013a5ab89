"""OpenAI chat completions ⇄ Google Gemini ``generateContent`` translation (client speaks OpenAI).

Wire format: https://ai.google.dev/api/generate-content, https://ai.google.dev/gemini-api/docs/function-calling,
https://ai.google.dev/gemini-api/docs/troubleshooting (errors).

Choices worth knowing:
- ``system``/``developer`` messages become ``systemInstruction``; ``assistant`` is role ``model``;
- a ``tool`` message becomes a ``functionResponse`` part named after the assistant's call with the
  same id (Gemini matches by name); a JSON-object result is sent as is, anything else as
  ``{"result": ...}``;
- Gemini gives function calls no id: one is made up (``call_<hex>``) unless Gemini sent one; a
  ``thoughtSignature`` rides in the id (``<id>__thought__<signature>``) and is restored on the
  way back, as Gemini 3 requires for function calling;
- content-filter stops (``SAFETY``, ``RECITATION``, ``PROHIBITED_CONTENT``, ... and a blocked
  prompt) are ``finish_reason: content_filter`` with HTTP 200, as OpenAI does;
- an invalid key (400 ``API_KEY_INVALID``) is reported like a 401: the router's credential, not the client's request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from iir.backends.base import Adapter, ClientRequest, StreamTranslator, UpstreamRequest
from iir.backends.jsonval import as_int
from iir.backends.openai_gemini_stream import (
    PROVIDER,
    THOUGHT_SEP,
    GeminiStreamTranslator,
    candidate_parts,
    error_from_gemini,
    finish_reason,
    openai_usage,
    parse_json,
)
from iir.backends.provider_errors import malformed
from iir.errors import BadRequestError, UpstreamError
from iir.table import Backend

__all__ = [
    "ADAPTER",
    "GeminiAdapter",
    "GeminiStreamTranslator",
    "error_from_gemini",
    "finish_reason",
    "from_gemini_response",
    "to_gemini_request",
]

_SCHEMA_DROP = frozenset({"$schema", "additionalProperties", "strict", "$id", "$comment"})


# --------------------------------------------------------------------------- request


def _text_of(content: Any, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise BadRequestError(f"{param} must be a string or a list of parts", param=param)


def _image_part(part: dict[str, Any], param: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise BadRequestError("image_url.url is required", param=param)
    if url.startswith("data:"):
        head, sep, data = url.partition(",")
        mime = head[5:].split(";", 1)[0]
        if not sep or ";base64" not in head or not mime:
            raise BadRequestError("image data URLs must be data:<type>;base64,<data>", param=param)
        return {"inlineData": {"mimeType": mime, "data": data}}
    ext = url.rsplit(".", 1)[-1].lower().split("?", 1)[0]
    mime = {"png": "image/png", "webp": "image/webp", "gif": "image/gif", "heic": "image/heic"}.get(ext, "image/jpeg")
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _user_parts(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequestError(f"{param} must be a string or a list of parts", param=param)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            parts.append(_image_part(part, f"{param}[{i}]"))
        else:
            raise BadRequestError(f"content part type {kind!r} is not supported by Gemini backends",
                                  param=f"{param}[{i}]")
    return parts


def _model_parts(msg: dict[str, Any], param: str, names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    text = _text_of(msg.get("content"), f"{param}.content")
    if text:
        parts.append({"text": text})
    for j, call in enumerate(msg.get("tool_calls") or []):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise BadRequestError("tool_calls need function.name", param=f"{param}.tool_calls[{j}]")
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            raise BadRequestError("tool call arguments must be JSON", param=f"{param}.tool_calls[{j}]") from None
        if not isinstance(args, dict):
            raise BadRequestError("tool call arguments must be a JSON object", param=f"{param}.tool_calls[{j}]")
        part: dict[str, Any] = {"functionCall": {"name": str(fn["name"]), "args": args}}
        if call.get("id"):
            names[str(call["id"])] = str(fn["name"])
            _, sep, signature = str(call["id"]).partition(THOUGHT_SEP)
            if sep and signature:
                part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _function_response(msg: dict[str, Any], param: str, names: dict[str, str]) -> dict[str, Any]:
    call_id = str(msg.get("tool_call_id") or "")
    name = names.get(call_id) or msg.get("name")
    if not name:
        raise BadRequestError("tool message answers no earlier assistant tool call", param=f"{param}.tool_call_id")
    text = _text_of(msg.get("content"), f"{param}.content")
    try:
        result = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        result = None
    return {"functionResponse": {"name": str(name),
                                 "response": result if isinstance(result, dict) else {"result": text}}}


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _schema(node: Any) -> Any:
    """JSON schema without the keywords Gemini's OpenAPI subset rejects."""
    if isinstance(node, dict):
        return {k: _schema(v) for k, v in node.items() if k not in _SCHEMA_DROP}
    if isinstance(node, list):
        return [_schema(v) for v in node]
    return node


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequestError("tools must be a list", param="tools")
    decls = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise BadRequestError("only function tools with a name are supported", param=f"tools[{i}]")
        decl: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            decl["description"] = fn["description"]
        params = fn.get("parameters")
        if params and (params.get("properties") or params.get("type") != "object"):
            decl["parameters"] = _schema(params)
        decls.append(decl)
    return [{"functionDeclarations": decls}]


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    modes = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
    if isinstance(choice, str) and choice in modes:
        return {"functionCallingConfig": {"mode": modes[choice]}}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}}
    raise BadRequestError("tool_choice must be auto, required, none or a named function", param="tool_choice")


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
                     ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        if body.get(src) is not None:
            cfg[dst] = body[src]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit:
        cfg["maxOutputTokens"] = limit
    if (body.get("n") or 1) != 1:
        cfg["candidateCount"] = body["n"]
    stop = body.get("stop")
    if stop:
        cfg["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        cfg["responseMimeType"] = "application/json"
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        cfg["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            cfg["responseJsonSchema"] = schema
    return cfg


def to_gemini_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completions body as a Gemini ``GenerateContentRequest`` (model goes in the URL)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequestError("messages must be a non-empty list", param="messages")
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for i, msg in enumerate(msgs):
        param = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            text = _text_of(msg.get("content"), f"{param}.content")
            if text:
                system.append(text)
        elif role == "user":
            _append(contents, "user", _user_parts(msg.get("content"), f"{param}.content"))
        elif role == "assistant":
            _append(contents, "model", _model_parts(msg, param, names))
        elif role == "tool":
            _append(contents, "user", [_function_response(msg, param, names)])
        else:
            raise BadRequestError(f"unsupported message role {role!r}", param=f"{param}.role")
    if not contents:
        raise BadRequestError("messages need at least one user or assistant message", param="messages")
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    cfg = _generation_config(body)
    if cfg:
        out["generationConfig"] = cfg
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config:
            out["toolConfig"] = tool_config
    return out


# --------------------------------------------------------------------------- response


def from_gemini_response(data: bytes | str | Mapping[str, Any], *, model: str = "",
                         created: int | None = None) -> dict[str, Any]:
    """A Gemini ``GenerateContentResponse`` as an OpenAI ``chat.completion`` (502 if malformed)."""
    doc = parse_json(data, "the response")
    candidates = doc.get("candidates")
    choices: list[dict[str, Any]] = []
    feedback = doc.get("promptFeedback")
    block = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if block and not candidates:
        choices.append({"index": 0, "message": {"role": "assistant", "content": None, "refusal": f"prompt blocked: {block}"},
                        "logprobs": None, "finish_reason": "content_filter"})
    elif candidates is None:
        raise malformed(PROVIDER, "response without candidates or promptFeedback.blockReason")
    elif not isinstance(candidates, list) or not candidates:
        raise malformed(PROVIDER, "'candidates' is not a non-empty list")
    else:
        for i, cand in enumerate(candidates):
            text, calls = candidate_parts(cand, f"candidates[{i}]")
            message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None,
                                       "refusal": None}
            if calls:
                message["tool_calls"] = calls
            choices.append({"index": as_int(cand.get("index"), i), "message": message, "logprobs": None,
                            "finish_reason": finish_reason(cand.get("finishReason"), bool(calls)) or "stop"})
    out: dict[str, Any] = {"id": str(doc.get("responseId") or f"chatcmpl-{uuid.uuid4().hex[:24]}"),
                           "object": "chat.completion",
                           "created": created if created is not None else int(time.time()),
                           "model": model or str(doc.get("modelVersion") or ""), "choices": choices}
    usage = openai_usage(doc.get("usageMetadata"))
    if usage:
        out["usage"] = usage
    return out


# --------------------------------------------------------------------------- adapter


@dataclass(slots=True)
class _Stream(StreamTranslator):
    inner: GeminiStreamTranslator = field(default_factory=GeminiStreamTranslator)

    def feed(self, block: bytes) -> list[bytes]:
        out = self.inner.feed(block)
        self._sync()
        return [out] if out else []

    def finish(self) -> list[bytes]:
        out = self.inner.close()
        self._sync()
        return [out] if out else []

    def _sync(self) -> None:
        self.usage, self.finish_reason, self.done = self.inner.usage, self.inner.finish_reason, self.inner.done


def method_url(base_url: str, model: str, stream: bool) -> str:
    """``{base}/models/{model}:generateContent`` or ``:streamGenerateContent?alt=sse``."""
    name = quote(model.removeprefix("models/"), safe="-._~")
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"{base_url.rstrip('/')}/models/{name}:{method}"


class GeminiAdapter(Adapter):
    """``kind: google`` backends: the Gemini API with an ``x-goog-api-key`` header."""

    protocol = "gemini"
    endpoints = frozenset({"chat"})

    def build(self, req: ClientRequest, backend: Backend) -> UpstreamRequest:
        if req.endpoint != "chat":
            raise self.unsupported(req, backend)
        headers = {"content-type": "application/json"}
        headers.update((k.lower(), v) for k, v in backend.headers)
        if req.stream:
            headers["accept"] = "text/event-stream"
        if backend.api_key:
            headers["x-goog-api-key"] = backend.api_key
        body = orjson.dumps(to_gemini_request(req.body))
        url = method_url(backend.base_url, backend.upstream_model(req.model), req.stream)
        return UpstreamRequest("POST", url, headers, body, req.stream)

    def translate_response(self, req: ClientRequest, backend: Backend, body: bytes) -> tuple[bytes, dict[str, int]]:
        out = from_gemini_response(body, model=req.model)
        usage = {k: v for k, v in out.get("usage", {}).items() if isinstance(v, int)}
        return orjson.dumps(out), usage

    def stream_translator(self, req: ClientRequest, backend: Backend) -> StreamTranslator:
        options = req.body.get("stream_options")
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        return _Stream(inner=GeminiStreamTranslator(model=req.model, include_usage=include_usage))

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return error_from_gemini(status, body, headers)


ADAPTER = GeminiAdapter()
