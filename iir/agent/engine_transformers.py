"""The ``transformers`` engine: PyTorch inference on MPS, CUDA or CPU, one model per agent.

Generation runs off the event loop on one dedicated thread (requests are served one at a time,
in arrival order); tokens stream back through ``AsyncTextIteratorStreamer``. A cancel flag,
checked by a ``StoppingCriteria`` after every token, stops a generation whose client went away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from iir.agent.engine import (
    EngineLoad,
    EngineStartError,
    GenerationRequest,
    GenerationResult,
    Prepared,
    StopMatcher,
)
from iir.errors import BadRequestError

__all__ = ["TransformersEngine", "pick_device"]

log = logging.getLogger("iir.agent")
DEFAULT_MAX_TOKENS = 256


def pick_device(requested: str = "auto") -> str:
    """``auto``: MPS on macOS when available, then CUDA, then CPU. ``cpu``, ``cuda``, ``cuda:N``
    and ``mps`` are used as given when this machine has them (``ValueError`` otherwise)."""
    import torch

    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available on this machine "
                             "(use --device auto or cpu)")
        if requested.startswith("cuda:") and int(requested[5:]) >= torch.cuda.device_count():
            raise ValueError(f"device {requested!r} requested but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
        mps = getattr(torch.backends, "mps", None)
        if requested == "mps" and (mps is None or not mps.is_available()):
            raise ValueError("device 'mps' requested but MPS is not available on this machine (use --device auto or cpu)")
        return requested
    mps = getattr(torch.backends, "mps", None)
    if platform.system() == "Darwin" and mps is not None and mps.is_available():
        return "mps"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _pick_dtype(requested: str, device: str) -> Any:
    import torch

    if requested == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device == "mps" else torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[requested]
    except KeyError:
        raise EngineStartError(f"unknown dtype {requested!r}: use auto, float32, float16 or bfloat16") from None


class _CancelCriteria:
    """A ``StoppingCriteria``: stop as soon as the cancel flag is set."""

    def __init__(self, cancel: threading.Event) -> None:
        self._cancel = cancel

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self._cancel.is_set(), dtype=torch.bool, device=input_ids.device)


class TransformersEngine:
    """Serves one Hugging Face causal LM from a local folder (or the local hub cache)."""

    kind = "transformers"

    def __init__(self, source: str, model: str, *, device: str = "auto", dtype: str = "auto",
                 context_window: int | None = None, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.source = source
        self.model = model
        self.requested_device = device
        self.dtype_name = dtype
        self.device = "unloaded"
        self.context_window = context_window or 0
        self._configured_window = context_window
        self._default_max_tokens = default_max_tokens
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iir-generate")
        self._running = 0
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._model: Any = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(self.source).expanduser()
        local = path.exists() or self.source.startswith((".", "/", "~"))
        if local and not (path / "config.json").is_file():
            raise EngineStartError(
                f"model weights for {self.model!r} not found: {path} has no config.json "
                "(point the agent config's `models` entry or --model at a folder saved with save_pretrained)")
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        try:
            self.device = pick_device(self.requested_device)
        except ValueError as e:
            raise EngineStartError(str(e)) from None
        dtype = _pick_dtype(self.dtype_name, self.device)
        t0 = time.perf_counter()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(path) if local else self.source)
            model = AutoModelForCausalLM.from_pretrained(str(path) if local else self.source, dtype=dtype)
        except OSError as e:
            where = str(path) if local else f"hub id {self.source!r}" + (" (HF_HUB_OFFLINE is set)" if offline else "")
            raise EngineStartError(f"cannot load model {self.model!r} from {where}: {e}") from None
        try:
            self._model = model.to(self.device).eval()  # type: ignore[arg-type]
        except (RuntimeError, ValueError) as e:  # e.g. out of device memory
            raise EngineStartError(f"cannot place model {self.model!r} on device {self.device!r}: {e}") from None
        window = getattr(model.config, "max_position_embeddings", None) or self._tokenizer.model_max_length
        self.context_window = min(self._configured_window or window, window)
        log.info("model loaded", extra={"model": self.model, "source": self.source, "device": self.device,
                                        "seconds": round(time.perf_counter() - t0, 2)})

    # -- requests --------------------------------------------------------------------------
    def _render(self, req: GenerationRequest) -> str:
        if req.raw and req.prompt is not None:
            return req.prompt
        messages = list(req.messages) or [{"role": "user", "content": req.prompt or ""}]
        if getattr(self._tokenizer, "chat_template", None):
            return str(self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def _tokenize(self, req: GenerationRequest) -> list[int]:
        return list(self._tokenizer(self._render(req), add_special_tokens=False)["input_ids"])

    async def prepare(self, request: GenerationRequest) -> Prepared:
        from jinja2 import TemplateError

        try:
            ids = await asyncio.to_thread(self._tokenize, request)
        except TemplateError as e:  # e.g. "Conversation roles must alternate user/assistant/user/assistant"
            raise BadRequestError(f"the chat template of {self.model!r} does not accept these messages: {e}",
                                  param="messages", code="invalid_messages") from None
        n, window = len(ids), self.context_window
        if n >= window:
            raise BadRequestError(
                f"the prompt is {n} tokens, but the context window of {self.model!r} is {window} tokens",
                param="messages", code="context_length_exceeded")
        if request.max_tokens is not None and n + request.max_tokens > window:
            raise BadRequestError(
                f"prompt ({n} tokens) + max_tokens ({request.max_tokens}) exceeds the context window of "
                f"{self.model!r} ({window} tokens)", param="max_tokens", code="context_length_exceeded")
        budget = request.max_tokens or min(self._default_max_tokens, window - n)
        return Prepared(request, n, budget, payload=ids)

    def _generate_sync(self, prepared: Prepared, cancel: threading.Event, streamer: Any) -> GenerationResult | None:
        import torch
        from transformers import StoppingCriteriaList

        req = prepared.request
        if cancel.is_set():  # the client left while the request was queued
            if streamer is not None:
                streamer.end()
            return None
        with self._lock:
            self._running += 1
        try:
            if req.seed is not None:
                torch.manual_seed(req.seed)
            ids = torch.tensor([prepared.payload], device=self.device)
            if req.temperature is None:  # left to the model: its generation_config (greedy for the demo model)
                sample = bool(getattr(self._model.generation_config, "do_sample", False))
            else:
                sample = req.temperature > 0
            kwargs: dict[str, Any] = {
                "input_ids": ids, "attention_mask": torch.ones_like(ids),
                "max_new_tokens": prepared.max_tokens, "min_new_tokens": min(req.min_tokens, prepared.max_tokens),
                "do_sample": sample, "stopping_criteria": StoppingCriteriaList([_CancelCriteria(cancel)]),
                "eos_token_id": self._tokenizer.eos_token_id, "pad_token_id": self._tokenizer.pad_token_id
                if self._tokenizer.pad_token_id is not None else self._tokenizer.eos_token_id,
                "streamer": streamer,
            }
            if sample:
                kwargs.update({k: v for k, v in (("temperature", req.temperature), ("top_p", req.top_p))
                               if v is not None})
            else:  # greedy: make sure model defaults do not turn sampling knobs on
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if req.stop:
                kwargs.update(stop_strings=list(req.stop), tokenizer=self._tokenizer)
            with torch.inference_mode():
                out = self._model.generate(**kwargs)
        except BaseException:
            if streamer is not None:
                streamer.end()
            raise
        finally:
            with self._lock:
                self._running -= 1
        new = out[0, len(prepared.payload):].tolist()
        eos = self._tokenizer.eos_token_id
        hit_eos = bool(new) and new[-1] == eos
        text, hit_stop = StopMatcher.cut(self._tokenizer.decode(new, skip_special_tokens=True), req.stop)
        if cancel.is_set():
            reason = "cancelled"
        elif hit_eos or hit_stop:
            reason = "stop"
        else:
            reason = "length" if len(new) >= prepared.max_tokens else "stop"
        return GenerationResult(text, reason, prepared.prompt_tokens, len(new))

    async def generate(self, prepared: Prepared, cancel: threading.Event) -> GenerationResult:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, self._generate_sync, prepared, cancel, None)
        return result or GenerationResult("", "cancelled", prepared.prompt_tokens, 0)

    async def stream(self, prepared: Prepared, cancel: threading.Event) -> AsyncIterator[str | GenerationResult]:
        from transformers import AsyncTextIteratorStreamer

        streamer = AsyncTextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._generate_sync, prepared, cancel, streamer)
        stops = StopMatcher(prepared.request.stop)
        try:
            async for delta in streamer:
                out = stops.feed(delta)
                if out:
                    yield out
            tail = stops.flush()
            if tail:
                yield tail
            result = await future
        finally:
            if not future.done():  # the consumer gave up: stop the generation, never leave it running
                cancel.set()
        yield result or GenerationResult("", "cancelled", prepared.prompt_tokens, 0)

    async def load(self) -> EngineLoad:
        return EngineLoad(running=self._running)
