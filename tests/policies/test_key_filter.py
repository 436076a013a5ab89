"""The ``allowed-by-key`` filter through the real router: a key restricted to some models may use
an alias such as ``auto``, and only reaches the backends whose served model it may use."""

from __future__ import annotations

import aiohttp

KEYS = {"IIR_KEY_CI": "sk-filter-ci-0123456789", "IIR_KEY_LOCAL": "sk-filter-local-0123456789"}


async def _post(base: str, key: str, model: str) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s, s.post(
            f"{base}/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"}, timeout=aiohttp.ClientTimeout(total=20)) as r:
        return r.status, dict(r.headers), await r.json()


async def test_key_filter_for_aliases(make_upstream, start_router):
    laptop, gpu, cloud = [await make_upstream(text=f"from {n}") for n in ("laptop", "gpu", "cloud")]
    base, _ = await start_router(f"""
version: 1
auth:
  keys:
    - {{name: ci, key: "${{IIR_KEY_CI}}", models: ["local/*", gpt-4o-mini]}}
    - {{name: local-only, key: "${{IIR_KEY_LOCAL}}", models: ["local/*"]}}
backends:
  gpu:    {{kind: openai-compatible, url: "{gpu.url}/v1", models: [llama-3.1-8b]}}
  laptop: {{kind: openai-compatible, url: "{laptop.url}/v1", models: [local/small]}}
  openai: {{kind: openai-compatible, url: "{cloud.url}/v1", models: [gpt-4o-mini, gpt-4o]}}
routes:
  - {{name: short, match: {{model: auto}}, to: [gpu, laptop, openai]}}
  - {{name: cloud, match: {{model: cloud}}, to: [openai]}}
  - {{name: by-model, match: {{model: "*"}}, to: by-model}}
""", KEYS)
    ci, local = KEYS["IIR_KEY_CI"], KEYS["IIR_KEY_LOCAL"]

    status, headers, body = await _post(base, ci, "auto")  # the gpu's llama is not ci's: skipped
    assert status == 200, body
    assert headers["x-iir-backend"] == "laptop"
    assert "gpu!allowed-by-key" in headers["x-iir-route"]
    assert (gpu.calls, laptop.calls) == (0, 1)

    status, headers, body = await _post(base, ci, "cloud")  # the alias resolves to gpt-4o-mini: allowed
    assert status == 200 and headers["x-iir-backend"] == "openai"
    assert cloud.bodies[-1]["model"] == "gpt-4o-mini"

    status, _, body = await _post(base, local, "cloud")  # ... which local-only may not use
    assert status == 403 and body["error"]["code"] == "model_not_allowed", body
    assert cloud.calls == 1

    for key, model in ((ci, "llama-3.1-8b"), (local, "gpt-4o-mini")):  # declared models: refused by auth
        status, _, body = await _post(base, key, model)
        assert status == 403 and body["error"]["code"] == "model_not_allowed"
    status, _, body = await _post(base, local, "no-such-model")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert (gpu.calls, laptop.calls, cloud.calls) == (0, 1, 1)
