"""The ``allowed-by-key`` filter through the real router: a key restricted to some models may use
an alias such as ``auto``, and only reaches the backends whose served model it may use."""

from __future__ import annotations

import json

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


PARITY_SPEC = """
version: 1
auth:
  keys:
    - {{name: ci, key: "${{IIR_KEY_CI}}", models: ["local/*", gpt-4o-mini]}}
    - {{name: local-only, key: "${{IIR_KEY_LOCAL}}", models: ["local/*"]}}
backends:
  gpu:    {{kind: openai-compatible, url: "{gpu}/v1", models: [llama-3.1-8b], context_window: 64}}
  laptop: {{kind: openai-compatible, url: "{laptop}/v1", models: [local/small]}}
  openai: {{kind: openai-compatible, url: "{cloud}/v1", models: [gpt-4o-mini, gpt-4o]}}
routes:
  - {{name: short, match: {{model: auto}}, to: [gpu, laptop, openai]}}
  - {{name: gpu-lane, match: {{model: gpu-lane}}, to: [gpu]}}
  - {{name: cloud, match: {{model: cloud}}, to: [openai]}}
  - {{name: by-model, match: {{model: "*"}}, to: by-model}}
"""


def _dropped_in_header(header: str) -> dict[str, str]:
    """``x-iir-route: route; strategy; a=1, b!reason`` → {dropped name: filter}."""
    parts = header.split("; ", 2)[2].split(", ") if header.count("; ") >= 2 else []
    return dict(p.split("!", 1) for p in parts if "!" in p)


async def test_explain_applies_the_key_filter_exactly_like_the_router(make_upstream, start_router, tmp_path):
    """`iir explain --key NAME` and the real router, same spec, same key, same request: the same
    answer status and the same candidates dropped by `allowed-by-key` (also where a backend's
    context window would drop it too: the router checks the key first)."""
    from click.testing import CliRunner

    from iir.cmd.spec import explain

    ups = {n: await make_upstream(text=f"from {n}") for n in ("gpu", "laptop", "cloud")}
    spec = PARITY_SPEC.format(**{n: u.url for n, u in ups.items()})
    base, _ = await start_router(spec, KEYS)
    path = tmp_path / "explain.yaml"
    path.write_text(spec)
    names = {"ci": KEYS["IIR_KEY_CI"], "local-only": KEYS["IIR_KEY_LOCAL"]}
    long_prompt = "word " * 200  # over the gpu's 64-token context window
    cases = [("ci", "auto", "hi"), ("ci", "auto", long_prompt), ("local-only", "auto", "hi"),
             ("local-only", "cloud", "hi"), ("ci", "cloud", "hi"), ("ci", "gpu-lane", "hi"),
             ("local-only", "gpu-lane", long_prompt), ("ci", "llama-3.1-8b", "hi"), ("ci", "local/small", "hi")]
    seen = set()
    for key_name, model, prompt in cases:
        result = CliRunner().invoke(explain, ["--spec", str(path), "--key", key_name, "-m", model,
                                              "-p", prompt, "--format", "json"], env=KEYS)
        assert result.exit_code == 0, result.output
        explained = json.loads(result.stdout)
        async with aiohttp.ClientSession() as s, s.post(
                f"{base}/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": prompt}]},
                headers={"Authorization": f"Bearer {names[key_name]}"}, timeout=aiohttp.ClientTimeout(total=20)) as r:
            status, header = r.status, r.headers.get("x-iir-route", "")
        case = (key_name, model, len(prompt))
        assert explained["status"] == status, case
        seen.add(status)
        by_key = {c["backend"] for c in explained["candidates"] if c["reason"].startswith("allowed-by-key:")}
        if status == 200:
            dropped = _dropped_in_header(header)
            assert {n for n, why in dropped.items() if why.startswith("allowed-by-key")} == by_key, (case, header)
            kept = {c["backend"] for c in explained["candidates"] if c["kept"]}
            assert kept and kept.isdisjoint(dropped), (case, header)
        elif status == 403 and explained["refused"] is None:  # dropped by the select stage, not at auth
            assert by_key == {c["backend"] for c in explained["candidates"]}, case
    assert seen == {200, 403}
