"""The tiktoken vocabulary is loaded in a background thread at start-up (and after a reload)
when the table serves an OpenAI-family model, and never when it does not (~40 MB)."""

from __future__ import annotations

import asyncio

from iir.policies.runtime import POLICIES, PolicyServices
from iir.server.run import RunningServer

SPEC = """
version: 1
state: {{registry: "{{registry}}"}}
backends:
  up: {{kind: openai-compatible, url: "{up}", models: [{models}]}}
  cloud: {{kind: openai, api_key: "${{NO_SUCH_KEY:-}}", models: [gpt-4o]}}
routes:
  - name: by-model
    match: {{model: "*"}}
    to: by-model
"""


def _services(srv: RunningServer) -> PolicyServices:
    app = srv.runner.app
    assert app is not None
    return app[POLICIES]


async def test_openai_family_model_loads_the_vocabulary_at_startup(upstreams, router, sdk):
    up = await upstreams()
    srv = await router(SPEC.format(up=up.url, models="gpt-4o-mini, local-m"))
    services = _services(srv)
    assert services.token_warmup is not None  # started with the server, not by a request
    assert await asyncio.wait_for(services.token_warmup, 60) == "tiktoken:cl100k_base"
    assert services.tokens.loaded and services.tokens.method == "tiktoken:cl100k_base"
    reply = await sdk(srv).chat.completions.create(model="gpt-4o-mini",
                                                    messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello from upstream!"


async def test_no_openai_family_model_never_loads_it_until_a_reload_adds_one(upstreams, router, sdk, tmp_path):
    up = await upstreams()
    # gpt-4o is declared only by an unconfigured backend (no key): no request can be served by it
    srv = await router(SPEC.format(up=up.url, models="local-m"))
    services = _services(srv)
    assert services.token_warmup is None
    await sdk(srv).chat.completions.create(model="local-m", messages=[{"role": "user", "content": "hi"}])
    assert not services.tokens.loaded and services.tokens.method == "estimate"

    (tmp_path / "iir.yaml").write_text(SPEC.format(up=up.url, models="local-m, gpt-4.1-mini")
                                       .replace("{registry}", str(tmp_path / "registry.db")))
    report = await srv.state.reload("admin")
    assert report.ok  # (the spec watcher may have swapped the table first: same outcome)
    assert services.token_warmup is not None
    assert await asyncio.wait_for(services.token_warmup, 60) == "tiktoken:cl100k_base"
    assert services.tokens.loaded
