"""Helpers for the provider tests: fixture loading and reassembly of OpenAI / Anthropic streams."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers"


def load_json(name: str) -> dict[str, Any]:
    """A JSON fixture without its ``_source`` citation."""
    doc = json.loads((FIXTURES / name).read_text())
    doc.pop("_source", None)
    return doc


def load_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sse_data(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    out = []
    for block in raw.decode().split("\n\n"):
        lines = [ln[6:] for ln in block.split("\n") if ln.startswith("data: ")]
        if lines:
            out.append("\n".join(lines))
    return out


def assemble_openai(raw: bytes) -> dict[str, Any]:
    """Reassemble OpenAI chat.completion.chunk SSE into text, tool calls, finish reason, usage."""
    text, calls, finish, usage, done, role = "", {}, None, None, False, None
    for data in sse_data(raw):
        if data == "[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        assert chunk["object"] == "chat.completion.chunk"
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            role = delta.get("role", role)
            text += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return {"text": text, "tool_calls": [calls[k] for k in sorted(calls)], "finish": finish, "usage": usage,
            "done": done, "role": role}


def anthropic_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of an Anthropic SSE body; checks that name and data.type agree."""
    out = []
    for block in raw.decode().split("\n\n"):
        name = next((ln[7:] for ln in block.split("\n") if ln.startswith("event: ")), None)
        data = next((ln[6:] for ln in block.split("\n") if ln.startswith("data: ")), None)
        if name is None:
            continue
        doc = json.loads(data)
        assert doc["type"] == name
        out.append((name, doc))
    return out
