"""Wire types of the Anthropic Messages API (``POST /v1/messages``). Types only, no logic.

Source: https://docs.anthropic.com/en/api/messages (request/response),
https://docs.anthropic.com/en/docs/build-with-claude/streaming (stream events),
https://docs.anthropic.com/en/api/errors (error shapes and statuses).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "API_VERSION_DEFAULT",
    "API_VERSION_NO_SAMPLING",
    "ContentBlock",
    "ContentBlockDeltaEvent",
    "ContentBlockStartEvent",
    "ContentBlockStopEvent",
    "ErrorBody",
    "ErrorEvent",
    "ImageBlock",
    "ImageSource",
    "Message",
    "MessageDeltaEvent",
    "MessageParam",
    "MessageStartEvent",
    "MessageStopEvent",
    "MessagesRequest",
    "PingEvent",
    "StopReason",
    "TextBlock",
    "Tool",
    "ToolChoice",
    "ToolResultBlock",
    "ToolUseBlock",
    "Usage",
]

# `anthropic-version` header values. 2023-06-01 accepts temperature/top_p/top_k; 2026-10-21
# rejects them with 400 (https://platform.claude.com/docs/en/api/versioning).
API_VERSION_DEFAULT = "2023-06-01"
API_VERSION_NO_SAMPLING = "2026-10-21"

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                     "model_context_window_exceeded"]


class ImageSource(TypedDict):
    type: Literal["base64", "url"]
    media_type: NotRequired[str]
    data: NotRequired[str]
    url: NotRequired[str]


class TextBlock(TypedDict):
    type: Literal["text"]
    text: str


class ImageBlock(TypedDict):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(TypedDict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(TypedDict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: NotRequired[str | list[TextBlock | ImageBlock]]
    is_error: NotRequired[bool]


ContentBlock = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock


class MessageParam(TypedDict):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(TypedDict):
    name: str
    description: NotRequired[str]
    input_schema: dict[str, Any]


class ToolChoice(TypedDict):
    type: Literal["auto", "any", "tool", "none"]
    name: NotRequired[str]
    disable_parallel_tool_use: NotRequired[bool]


class MessagesRequest(TypedDict):
    model: str
    max_tokens: int
    messages: list[MessageParam]
    system: NotRequired[str | list[TextBlock]]
    stop_sequences: NotRequired[list[str]]
    stream: NotRequired[bool]
    temperature: NotRequired[float]
    top_p: NotRequired[float]
    top_k: NotRequired[int]
    tools: NotRequired[list[Tool]]
    tool_choice: NotRequired[ToolChoice]
    metadata: NotRequired[dict[str, str]]


class Usage(TypedDict):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: NotRequired[int | None]
    cache_read_input_tokens: NotRequired[int | None]


class Message(TypedDict):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class ErrorBody(TypedDict):
    type: str  # invalid_request_error | authentication_error | ... | overloaded_error
    message: str


class ErrorEvent(TypedDict):
    """Both the HTTP error body and the ``error`` stream event."""

    type: Literal["error"]
    error: ErrorBody
    request_id: NotRequired[str]


class MessageStartEvent(TypedDict):
    type: Literal["message_start"]
    message: Message


class ContentBlockStartEvent(TypedDict):
    type: Literal["content_block_start"]
    index: int
    content_block: ContentBlock


class ContentBlockDeltaEvent(TypedDict):
    type: Literal["content_block_delta"]
    index: int
    delta: dict[str, Any]  # {"type": "text_delta", "text"} | {"type": "input_json_delta", "partial_json"}


class ContentBlockStopEvent(TypedDict):
    type: Literal["content_block_stop"]
    index: int


class MessageDeltaEvent(TypedDict):
    type: Literal["message_delta"]
    delta: dict[str, Any]  # {"stop_reason", "stop_sequence"}
    usage: dict[str, int]  # cumulative output_tokens (and input_tokens)


class MessageStopEvent(TypedDict):
    type: Literal["message_stop"]


class PingEvent(TypedDict):
    type: Literal["ping"]
