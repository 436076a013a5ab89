"""The ``vllm`` engine: the agent fronts a vLLM OpenAI server and reports its load.

Either it points at a running server (``vllm.url``) or it starts one as a child process
(``python -m vllm.entrypoints.openai.api_server``, with ``vllm.python`` as the interpreter, so
vLLM can live in its own virtualenv), waits until it answers a real request, and stops it on
shutdown. Requests are forwarded to ``/v1/chat/completions`` (``/v1/completions`` for raw
prompts); the load report reads ``vllm:num_requests_running`` / ``vllm:num_requests_waiting``
(and KV-cache usage) from the server's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from iir.agent.config import VllmSettings
from iir.agent.engine import EngineLoad, EngineStartError, GenerationRequest, GenerationResult, Prepared
from iir.errors import BadRequestError, IIRError, UpstreamError

__all__ = ["VllmEngine", "parse_vllm_metrics"]

log = logging.getLogger("iir.agent")
_GAUGES = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
           "vllm:kv_cache_usage_perc": "kv_cache_usage_perc", "vllm:gpu_cache_usage_perc": "kv_cache_usage_perc"}


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """Sum the load gauges of a Prometheus text exposition (over all label sets)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        key = _GAUGES.get(name)
        if key is None:
            continue
        with contextlib.suppress(ValueError, IndexError):
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _error_from(status: int, raw: bytes, headers: Any = None) -> IIRError:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = {}
    err = data.get("error", data) if isinstance(data, dict) else {}
    message = str(err.get("message") or raw[:300].decode(errors="replace") or f"HTTP {status}") \
        if isinstance(err, dict) else str(err)
    if status == 400:
        lowered = message.lower()
        code = "context_length_exceeded" if "context" in lowered or "maximum" in lowered else None
        if code:
            message = f"{message} (the context window is exceeded)"
        return BadRequestError(f"vLLM: {message}", code=code)
    retry = headers.get("Retry-After") if headers is not None else None
    return UpstreamError(f"vLLM answered HTTP {status}: {message}", upstream_status=status,
                         retryable=status >= 500 or status == 429, headers={"Retry-After": retry} if retry else None)


class VllmEngine:
    kind = "vllm"

    def __init__(self, source: str, model: str, settings: VllmSettings, *, context_window: int | None = None) -> None:
        self.source = source
        self.model = model
        self.settings = settings
        self.device = "vllm"
        self.context_window = context_window or 0
        self._configured_window = context_window
        self._session: aiohttp.ClientSession | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._log_path: Path | None = None
        self.base_url = ""  # .../v1
        self.root_url = ""  # server root, for /health and /metrics

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        if self.settings.url:
            url = self.settings.url.rstrip("/")
            self.root_url = url.removesuffix("/v1")
            self.device = "vllm (remote)"
        else:
            port = self.settings.port or _free_port()
            self.root_url = f"http://127.0.0.1:{port}"
            await self._spawn(port)
            self.device = "vllm (child)"
        self.base_url = f"{self.root_url}/v1"
        try:
            await self._wait_ready()
        except BaseException:
            await self.close()
            raise

    def _headers(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    async def _spawn(self, port: int) -> None:
        source = str(Path(self.source).expanduser()) if Path(self.source).expanduser().exists() else self.source
        cmd = [self.settings.python, "-m", "vllm.entrypoints.openai.api_server", "--model", source,
               "--served-model-name", self.model, "--host", "127.0.0.1", "--port", str(port)]
        if self._configured_window:
            cmd += ["--max-model-len", str(self._configured_window)]
        cmd += self.settings.args
        env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", **self.settings.env}
        fd, log_path = tempfile.mkstemp(prefix="iir-vllm-", suffix=".log")
        self._log_path = Path(log_path)
        log.info("starting vLLM: %s (log: %s)", " ".join(cmd), log_path)
        try:
            self._proc = await asyncio.create_subprocess_exec(*cmd, stdout=fd, stderr=fd, env=env,
                                                              start_new_session=True)
        except OSError as e:
            raise EngineStartError(f"cannot start vLLM with {self.settings.python}: {e}") from None
        finally:
            os.close(fd)

    def _log_tail(self, lines: int = 15) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    async def _wait_ready(self) -> None:
        """Until /v1/models lists the model and one real completion works (vLLM's /health can say
        ready a moment before the first request does)."""
        assert self._session is not None
        deadline = time.monotonic() + self.settings.startup_timeout
        next_note = time.monotonic() + 5
        while True:
            if self._proc is not None and self._proc.returncode is not None:
                raise EngineStartError(f"vLLM exited with code {self._proc.returncode} while starting:\n"
                                       f"{self._log_tail()}")
            try:
                async with self._session.get(f"{self.base_url}/models", headers=self._headers()) as r:
                    if r.status == 200:
                        data = await r.json()
                        served = {m["id"]: m for m in data.get("data", [])}
                        if self.model not in served:
                            raise EngineStartError(f"the vLLM server at {self.root_url} serves "
                                                   f"{sorted(served)}, not {self.model!r}")
                        window = served[self.model].get("max_model_len")
                        self.context_window = int(self._configured_window or window or 2048)
                        if await self._warm_up():
                            return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() >= next_note:
                next_note = time.monotonic() + 15
                log.info("waiting for vLLM at %s to answer (up to %.0f s)", self.root_url, self.settings.startup_timeout)
            if time.monotonic() > deadline:
                where = f"\n{self._log_tail()}" if self._proc is not None else ""
                raise EngineStartError(f"vLLM at {self.root_url} not ready within "
                                       f"{self.settings.startup_timeout:.0f} s{where}")
            await asyncio.sleep(1.0)

    async def _warm_up(self) -> bool:
        body = {"model": self.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        assert self._session is not None
        async with self._session.post(f"{self.base_url}/chat/completions", json=body, headers=self._headers()) as r:
            return r.status == 200

    async def close(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, 15)  # the server and its engine workers
            try:
                await asyncio.wait_for(self._proc.wait(), 30)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, 9)
                await self._proc.wait()
        if self._session is not None:
            await self._session.close()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    # -- requests --------------------------------------------------------------------------
    async def prepare(self, request: GenerationRequest) -> Prepared:
        if request.max_tokens is not None and request.max_tokens >= self.context_window:
            raise BadRequestError(f"max_tokens ({request.max_tokens}) exceeds the context window of "
                                  f"{self.model!r} ({self.context_window} tokens)", param="max_tokens",
                                  code="context_length_exceeded")
        body: dict[str, Any] = {"model": self.model}
        if request.raw and request.prompt is not None:
            path, body["prompt"] = "/completions", request.prompt
        else:
            path = "/chat/completions"
            body["messages"] = list(request.messages) or [{"role": "user", "content": request.prompt or ""}]
        # an omitted temperature/top_p stays omitted: vLLM then applies the model's generation_config
        knobs: tuple[tuple[str, Any], ...] = (("temperature", request.temperature), ("top_p", request.top_p))
        for name, value in (*knobs, ("max_tokens", request.max_tokens), ("seed", request.seed),
                            ("stop", list(request.stop) or None), ("min_tokens", request.min_tokens or None)):
            if value is not None:
                body[name] = value
        return Prepared(request, 0, request.max_tokens or 0, payload=(path, body))

    @staticmethod
    def _text(choice: dict[str, Any]) -> str:
        if "message" in choice:
            return str(choice["message"].get("content") or "")
        if "delta" in choice:
            return str(choice["delta"].get("content") or "")
        return str(choice.get("text") or "")

    async def generate(self, prepared: Prepared, cancel: threading.Event) -> GenerationResult:
        assert self._session is not None
        path, body = prepared.payload
        task = asyncio.ensure_future(self._post(path, body))
        while not task.done():
            await asyncio.wait({task}, timeout=0.2)
            if cancel.is_set() and not task.done():
                task.cancel()  # closing the connection makes vLLM abort the request
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return GenerationResult("", "cancelled", 0, 0)
        data = task.result()
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return GenerationResult(self._text(choice), choice.get("finish_reason") or "stop",
                                int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None
        async with self._session.post(f"{self.base_url}{path}", json=body, headers=self._headers()) as r:
            raw = await r.read()
            if r.status != 200:
                raise _error_from(r.status, raw, r.headers)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("vLLM sent an unreadable response") from None
        if not isinstance(data, dict) or not data.get("choices"):
            raise UpstreamError("vLLM sent a response without choices")
        return data

    async def stream(self, prepared: Prepared, cancel: threading.Event) -> AsyncIterator[str | GenerationResult]:
        assert self._session is not None
        path, body = prepared.payload
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        finish: str = "stop"
        usage: dict[str, Any] = {}
        async with self._session.post(f"{self.base_url}{path}", json=body, headers=self._headers()) as r:
            if r.status != 200:
                raise _error_from(r.status, await r.read(), r.headers)
            async for line in r.content:
                if cancel.is_set():
                    yield GenerationResult("", "cancelled", 0, 0)
                    return
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                chunk = orjson.loads(payload)
                if "error" in chunk:
                    raise _error_from(500, payload)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or ():
                    text = self._text(choice)
                    if text:
                        yield text
                    finish = choice.get("finish_reason") or finish
        yield GenerationResult("", finish, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))

    async def load(self) -> EngineLoad:
        """vLLM's own queue, from its /metrics (zeros if the endpoint does not answer)."""
        if self._session is None:
            return EngineLoad()
        try:
            async with self._session.get(f"{self.root_url}/metrics", timeout=aiohttp.ClientTimeout(total=2)) as r:
                gauges = parse_vllm_metrics(await r.text()) if r.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError):
            gauges = {}
        return EngineLoad(running=int(gauges.get("running", 0)), waiting=int(gauges.get("waiting", 0)),
                          extra={k: v for k, v in gauges.items()})
