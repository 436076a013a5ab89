"""Provider presets: default base URL, key variable and wire protocol for each backend kind.

Data only. ``<PROVIDER>_BASE_URL`` overrides the URL and ``EXTERNAL_<PROVIDER>_KEY`` supplies
the key when the spec gives none (applied by the compiler, which receives the environment).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True, slots=True)
class Preset:
    kind: str
    protocol: str  # adapter family: openai | agent | anthropic | gemini
    base_url: str | None  # None: the spec must give a URL (or, for llm-d, LLMD_ENDPOINT)
    key_env: str | None  # EXTERNAL_<PROVIDER>_KEY
    url_env: str | None  # <PROVIDER>_BASE_URL
    headers: tuple[tuple[str, str], ...] = ()


PRESETS: dict[str, Preset] = {
    "agent": Preset("agent", "agent", None, None, None),
    "vllm": Preset("vllm", "openai", None, None, "VLLM_BASE_URL"),
    "llm-d": Preset("llm-d", "openai", None, None, "LLMD_ENDPOINT"),
    "openai-compatible": Preset("openai-compatible", "openai", None, None, None),
    "openai": Preset("openai", "openai", "https://api.openai.com/v1", "EXTERNAL_OPENAI_KEY", "OPENAI_BASE_URL"),
    # https://openrouter.ai/docs/api-reference/overview (Bearer key, OpenAI shapes) and
    # https://openrouter.ai/docs/features/app-attribution (X-OpenRouter-Title; add HTTP-Referer via `headers`)
    "openrouter": Preset("openrouter", "openai", "https://openrouter.ai/api/v1", "EXTERNAL_OPENROUTER_KEY",
                         "OPENROUTER_BASE_URL", (("X-OpenRouter-Title", "iir"),)),
    # https://docs.x.ai/docs/api-reference (OpenAI-compatible chat completions, Bearer key)
    "grok": Preset("grok", "openai", "https://api.x.ai/v1", "EXTERNAL_GROK_KEY", "GROK_BASE_URL"),
    # https://docs.venice.ai/api-reference/api-spec (OpenAI-compatible, base .../api/v1, Bearer key)
    "venice": Preset("venice", "openai", "https://api.venice.ai/api/v1", "EXTERNAL_VENICE_KEY", "VENICE_BASE_URL"),
    # https://docs.anthropic.com/en/api/messages (POST /v1/messages, x-api-key). 2023-06-01 keeps
    # temperature/top_p; 2026-10-21 rejects them (https://platform.claude.com/docs/en/api/versioning)
    "anthropic": Preset("anthropic", "anthropic", "https://api.anthropic.com", "EXTERNAL_ANTHROPIC_KEY",
                        "ANTHROPIC_BASE_URL", (("anthropic-version", "2023-06-01"),)),
    # https://ai.google.dev/api/generate-content (models/{m}:generateContent, x-goog-api-key)
    "google": Preset("google", "gemini", "https://generativelanguage.googleapis.com/v1beta",
                     "EXTERNAL_GOOGLE_KEY", "GOOGLE_BASE_URL"),
}
