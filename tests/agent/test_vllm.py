"""Real vLLM on CPU (``make test-vllm``): the agent's ``vllm`` engine and the router's ``vllm`` backend kind.

The agent's engine starts a real vLLM OpenAI server (from the ``.venv-vllm`` interpreter given in
``IIR_VLLM_PYTHON``) serving the tiny model, once for this module.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
import pytest_asyncio
from aiohttp import web

from iir.agent.config import AgentConfig, VllmSettings
from iir.agent.demo_model import DEMO_ANSWER
from iir.agent.engine_vllm import VllmEngine
from iir.agent.service import create_app
from iir.compile.build import build_table
from iir.server.app import create_app as create_router_app
from iir.server.state import TableState
from tests.agent.conftest import eventually

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900), pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm_engine(tiny_model_dir: Path) -> AsyncIterator[VllmEngine]:
    python = os.environ.get("IIR_VLLM_PYTHON")
    if not python:
        pytest.fail("IIR_VLLM_PYTHON is not set: run these tests with `make test-vllm`")
    settings = VllmSettings(
        python=python, args=["--dtype", "float32", "--enforce-eager"], startup_timeout=600,
        env={"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"})
    engine = VllmEngine(str(tiny_model_dir), "tiny-demo", settings, context_window=256)
    await engine.start()
    yield engine
    await engine.close()


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest_asyncio.fixture(loop_scope="module")
async def vllm_agent(vllm_engine: VllmEngine) -> AsyncIterator[str]:
    runner, url = await _serve(create_app(vllm_engine, AgentConfig(model="tiny-demo", engine="vllm")))
    yield url
    await runner.cleanup()


async def test_vllm_engine_infer_and_stream(vllm_agent: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{vllm_agent}/infer", json={"prompt": "Hi!", "temperature": 0}) as r:
            body = await r.json()
        assert r.status == 200, body
        assert body["text"] == DEMO_ANSWER and body["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] > 0
        events = []
        async with s.post(f"{vllm_agent}/infer", json={"prompt": "Hi!", "temperature": 0, "stream": True}) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    events.append(line[6:].strip())
        assert events[-1] == b"[DONE]" and len(events) >= 4
        async with s.post(f"{vllm_agent}/infer", json={"prompt": "Hi!", "max_tokens": 100_000}) as r:
            assert r.status == 400


async def test_vllm_engine_openai_endpoints(vllm_agent: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{vllm_agent}/v1", api_key="x", max_retries=0) as client:
        assert [m.id for m in (await client.models.list()).data] == ["tiny-demo"]
        chat = await client.chat.completions.create(
            model="tiny-demo", messages=[{"role": "user", "content": "Say hello."}], temperature=0)
        assert chat.choices[0].message.content == DEMO_ANSWER
        stream = await client.chat.completions.create(
            model="tiny-demo", messages=[{"role": "user", "content": "ping"}], temperature=0, stream=True,
            stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in stream:
            usage = chunk.usage or usage
            text += "".join(c.delta.content or "" for c in chunk.choices)
        assert text == DEMO_ANSWER and usage is not None and usage.completion_tokens > 0


async def test_agent_load_report_reads_vllm_metrics(vllm_agent: str, vllm_engine: VllmEngine) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{vllm_agent}/health") as r:
            idle = await r.json()
        assert idle["engine"] == "vllm" and idle["context_window"] == 256
        assert idle["engine_load"]["running"] == 0 and idle["engine_load"]["waiting"] == 0

        long = {"prompt": "Hi!", "temperature": 0, "min_tokens": 200, "max_tokens": 200}
        tasks = [asyncio.create_task(s.post(f"{vllm_agent}/infer", json=long)) for _ in range(3)]

        async def busy() -> bool:
            load = await vllm_engine.load()
            return load.running + load.waiting >= 1

        await eventually(busy, timeout=60, every=0.05)
        for t in tasks:
            resp = await t
            assert resp.status == 200
            resp.release()


ROUTER_SPEC = """
version: 1
server: {{listen: "127.0.0.1:0"}}
state: {{registry: "{registry}"}}
backends:
  gpu-box: {{kind: vllm, url: "{url}", models: [tiny-demo], context_window: 256}}
routes:
  - name: all
    to: by-model
"""


async def test_router_vllm_backend_kind(vllm_engine: VllmEngine, tmp_path: Path) -> None:
    spec = tmp_path / "iir.yaml"
    spec.write_text(ROUTER_SPEC.format(registry=tmp_path / "iir.db", url=vllm_engine.base_url))
    app = create_router_app(TableState(path=spec, built=build_table(spec, {}), env=lambda: {}), watch=False)
    runner, url = await _serve(app)
    try:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
            assert "tiny-demo" in [m.id for m in (await client.models.list()).data]
            chat = await client.chat.completions.create(
                model="tiny-demo", messages=[{"role": "user", "content": "Hi!"}], temperature=0)
            assert chat.choices[0].message.content == DEMO_ANSWER
            stream = await client.chat.completions.create(
                model="tiny-demo", messages=[{"role": "user", "content": "Hi!"}], temperature=0, stream=True,
                stream_options={"include_usage": True})
            text, usage = "", None
            async for chunk in stream:
                usage = chunk.usage or usage
                text += "".join(c.delta.content or "" for c in chunk.choices)
            assert text == DEMO_ANSWER and usage is not None and usage.total_tokens > 0
    finally:
        await runner.cleanup()
