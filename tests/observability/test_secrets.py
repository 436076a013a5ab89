"""No secret ever leaves the router: with client keys, an admin token, an agent registration
token and provider credentials configured (through the environment), real `iir serve` takes
traffic including errors and an agent registration; then everything it wrote (stdout, stderr,
its log file, its SQLite registry, any other file in its working directory), every response
(bodies and headers) and /metrics are scanned for the secret values."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
import openai

from tests.conftest import free_port

from .serving import serve, stop, wait_ready
from .test_router_traffic import (
    ADMIN_TOKEN,
    ENV,
    KEY_CI,
    KEY_LIMITED,
    MESSAGES,
    OPENAI_KEY,
    UPSTREAM_TOKEN,
    write_spec,
)
from .upstream import upstream

WRONG_KEY = KEY_CI[:-1] + "X"  # what a client sent by mistake is a secret too
AGENT_TOKEN = "agent-registration-secret-31415926"
SECRETS = (KEY_CI, KEY_LIMITED, UPSTREAM_TOKEN, OPENAI_KEY, ADMIN_TOKEN, WRONG_KEY, AGENT_TOKEN)
EXTRA = """server:
  log: {{file: "{log}", format: json}}
agents:
  token: "${{IIR_AGENT_TOKEN}}"
  allow_networks: [127.0.0.0/8]
"""


async def test_no_secret_in_logs_error_bodies_or_metrics(tmp_path: Path) -> None:
    head: list[str] = []
    seen: list[str] = []  # every response status line, header and body the router sent

    async def arecord(r: httpx.Response) -> None:
        await r.aread()
        seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")

    async with upstream() as up:
        spec = write_spec(tmp_path, up.url)
        log_file = tmp_path / "logs" / "iir.log"
        spec.write_text(spec.read_text().replace("version: 1\n", "version: 1\n" + EXTRA.format(log=log_file), 1))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = serve(spec, port, tmp_path, {**ENV, "LOG_LEVEL": "debug", "IIR_AGENT_TOKEN": AGENT_TOKEN})
        try:
            head = await wait_ready(base, proc)
            hooks = {"response": [arecord]}

            def sdk(key: str) -> openai.AsyncOpenAI:
                return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=20,
                                          http_client=httpx.AsyncClient(event_hooks=hooks))

            ci, limited, wrong = sdk(KEY_CI), sdk(KEY_LIMITED), sdk(WRONG_KEY)
            await ci.chat.completions.create(model="tiny", messages=MESSAGES)
            await ci.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # the cloud key is used
            stream = await ci.chat.completions.create(model="tiny", messages=MESSAGES, stream=True)
            async for _ in stream:
                pass
            await ci.chat.completions.create(model="flaky", messages=MESSAGES)  # fallback after a 500
            failures = [
                ci.chat.completions.create(model="broken", messages=MESSAGES),  # upstream 500 echoes its token
                ci.chat.completions.create(model="no-such-model", messages=MESSAGES),
                wrong.chat.completions.create(model="tiny", messages=MESSAGES),
                limited.chat.completions.create(model="tiny", messages=MESSAGES),
                limited.chat.completions.create(model="tiny", messages=MESSAGES),
                limited.chat.completions.create(model="tiny", messages=MESSAGES),
            ]
            statuses = []
            for call in failures:
                try:
                    await call
                    statuses.append(200)
                except openai.APIStatusError as e:
                    statuses.append(e.status_code)
            assert statuses == [502, 404, 401, 200, 200, 429]
            async with httpx.AsyncClient(event_hooks=hooks, timeout=20) as raw:
                await raw.post(f"{base}/v1/chat/completions", content=b"{not json",
                               headers={"Authorization": f"Bearer {KEY_CI}", "Content-Type": "application/json"})
                await raw.post(f"{base}/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES},
                               headers={"x-api-key": WRONG_KEY})
                await raw.get(f"{base}/admin/", headers={"Authorization": f"Bearer {WRONG_KEY}"})
                await raw.get(f"{base}/admin/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                await raw.post(f"{base}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                await raw.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {KEY_CI}"})
                agent = {"url": f"{up.url}/good", "models": ["agent-model"]}
                denied = await raw.post(f"{base}/register", json=agent, headers={"Authorization": f"Bearer {WRONG_KEY}"})
                assert denied.status_code == 401
                registered = await raw.post(f"{base}/register", json=agent,
                                            headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
                assert registered.status_code == 200, registered.text
                metrics = await raw.get(f"{base}/metrics")
            assert "iir_requests_total" in metrics.text
        finally:
            out, err = stop(proc)
            out = "".join(head) + out
    assert proc.returncode == 0, err
    assert f"Bearer {UPSTREAM_TOKEN}" in up.auth and f"Bearer {OPENAI_KEY}" in up.auth  # credentials were used
    assert '"event":"request"' in out and '"event":"startup"' in out  # the log really is on stdout
    written = {"stdout": out, "stderr": err, "responses": "\n".join(seen)}
    files = sorted(f for f in tmp_path.rglob("*") if f.is_file() and f != spec)
    assert log_file in files and (tmp_path / "iir.db") in files  # the router's log file and registry
    assert '"event":"request"' in log_file.read_text()
    written.update({str(f.relative_to(tmp_path)): f.read_bytes().decode("latin-1") for f in files})
    leaks = [(where, s[:8] + "…", text[max(0, text.find(s) - 300):text.find(s)][-300:]) for where, text in written.items() for s in SECRETS if s in text]
    assert not leaks, f"secrets leaked: {leaks}"
    # Nothing even tried to log a secret (the handlers' masking never had to act).
    assert "***" not in out and "***" not in err
