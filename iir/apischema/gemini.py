"""Wire types of the Google Gemini API (``models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``). Types only, no logic.

Source: https://ai.google.dev/api/generate-content (request, response, FinishReason,
UsageMetadata, PromptFeedback), https://ai.google.dev/gemini-api/docs/function-calling
(tools, functionCall/functionResponse), https://ai.google.dev/gemini-api/docs/troubleshooting
(error statuses).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "BLOCKED_FINISH_REASONS",
    "Blob",
    "Candidate",
    "Content",
    "ErrorEnvelope",
    "FileData",
    "FunctionCall",
    "FunctionDeclaration",
    "FunctionResponse",
    "GenerateContentRequest",
    "GenerateContentResponse",
    "GenerationConfig",
    "Part",
    "PromptFeedback",
    "Tool",
    "ToolConfig",
    "UsageMetadata",
]

# finishReason values that mean "stopped by a content filter" (OpenAI: finish_reason content_filter).
BLOCKED_FINISH_REASONS = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                                    "IMAGE_SAFETY", "LANGUAGE", "IMAGE_PROHIBITED_CONTENT"})


class Blob(TypedDict):
    mimeType: str
    data: str  # base64


class FileData(TypedDict):
    mimeType: NotRequired[str]
    fileUri: str


class FunctionCall(TypedDict):
    name: str
    args: NotRequired[dict[str, Any]]
    id: NotRequired[str]


class FunctionResponse(TypedDict):
    name: str
    response: dict[str, Any]
    id: NotRequired[str]


class Part(TypedDict, total=False):
    text: str
    thought: bool
    inlineData: Blob
    fileData: FileData
    functionCall: FunctionCall
    functionResponse: FunctionResponse


class Content(TypedDict):
    role: NotRequired[Literal["user", "model"]]
    parts: list[Part]


class FunctionDeclaration(TypedDict):
    name: str
    description: NotRequired[str]
    parameters: NotRequired[dict[str, Any]]


class Tool(TypedDict):
    functionDeclarations: list[FunctionDeclaration]


class ToolConfig(TypedDict):
    functionCallingConfig: dict[str, Any]  # {"mode": AUTO|ANY|NONE, "allowedFunctionNames": [...]}


class GenerationConfig(TypedDict, total=False):
    temperature: float
    topP: float
    topK: int
    maxOutputTokens: int
    stopSequences: list[str]
    candidateCount: int
    seed: int
    presencePenalty: float
    frequencyPenalty: float
    responseMimeType: str
    responseJsonSchema: dict[str, Any]


class GenerateContentRequest(TypedDict):
    contents: list[Content]
    systemInstruction: NotRequired[Content]
    generationConfig: NotRequired[GenerationConfig]
    tools: NotRequired[list[Tool]]
    toolConfig: NotRequired[ToolConfig]
    safetySettings: NotRequired[list[dict[str, str]]]


class Candidate(TypedDict, total=False):
    content: Content
    finishReason: str  # STOP | MAX_TOKENS | SAFETY | RECITATION | OTHER | BLOCKLIST | ... | MALFORMED_FUNCTION_CALL
    index: int
    safetyRatings: list[dict[str, Any]]


class PromptFeedback(TypedDict, total=False):
    blockReason: str  # SAFETY | OTHER | BLOCKLIST | PROHIBITED_CONTENT | IMAGE_SAFETY
    safetyRatings: list[dict[str, Any]]


class UsageMetadata(TypedDict, total=False):
    promptTokenCount: int
    candidatesTokenCount: int
    totalTokenCount: int
    cachedContentTokenCount: int
    thoughtsTokenCount: int


class GenerateContentResponse(TypedDict, total=False):
    candidates: list[Candidate]
    promptFeedback: PromptFeedback
    usageMetadata: UsageMetadata
    modelVersion: str
    responseId: str


class ErrorEnvelope(TypedDict):
    """``{"error": {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED", "details": [...]}}``"""

    error: dict[str, Any]
