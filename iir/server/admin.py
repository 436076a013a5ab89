"""The admin API under ``/admin/``: spec hash and load time, last reload, backends, reload.

Guarded by ``auth.admin_token``; with no token set it answers loopback clients only.
"""

from __future__ import annotations

import os

import orjson
from aiohttp import web

from iir.backends.credentials import redact_url
from iir.errors import AuthenticationError, PermissionDeniedError
from iir.pipeline.auth import admin_allowed, presented_key
from iir.pipeline.services import SERVICES
from iir.policies.runtime import POLICIES
from iir.server.handlers import error_response
from iir.server.state import TABLE_STATE

__all__ = ["add_admin_routes"]


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _denied(request: web.Request) -> web.Response | None:
    auth = request.app[TABLE_STATE].table.auth
    if admin_allowed(auth, request):
        return None
    if auth.admin_token_sha256 is None:
        return error_response(PermissionDeniedError("the admin API answers loopback clients only "
                                                    "(set auth.admin_token to allow remote access)",
                                                    code="admin_forbidden"))
    if presented_key(request) is None:
        return error_response(AuthenticationError("the admin API needs the admin token"))
    return error_response(AuthenticationError("invalid admin token"))


async def status(request: web.Request) -> web.Response:
    denied = _denied(request)
    if denied is not None:
        return denied
    state = request.app[TABLE_STATE]
    table = state.table
    policies = request.app.get(POLICIES)
    health = policies.health if policies is not None else None

    def circuit(name: str) -> dict[str, object] | None:
        if health is None:
            return None
        s = health.stats(name)
        return {"circuit": s.state, "inflight": s.inflight}

    backends = [{"name": b.name, "kind": b.kind, "protocol": b.protocol, "url": redact_url(b.base_url), "models": list(b.models),
                 "state": "configured" if b.configured else "unconfigured",
                 "reason": b.unconfigured_reason or None, "health": circuit(b.name)}
                for b in table.backends.values()]
    for agent in request.app[SERVICES].live_agents(table, None):
        backends.append({"name": agent.name, "kind": agent.kind, "protocol": agent.protocol, "url": agent.base_url,
                         "models": list(agent.models), "state": "live", "reason": None,
                         "health": circuit(agent.name)})
    return _json({
        "pid": os.getpid(),
        "spec": {"path": str(state.path), "digest": table.digest, "loaded_at": state.loaded_at},
        "last_reload": state.last.to_dict() if state.last else None,
        "auth": {"open": table.auth.open, "keys": len(table.auth.keys_by_sha256)},
        "routes": [{"name": r.name, "to": "by-model" if r.by_model else list(r.targets)} for r in table.routes],
        "backends": backends,
    })


async def reload(request: web.Request) -> web.Response:
    denied = _denied(request)
    if denied is not None:
        return denied
    report = await request.app[TABLE_STATE].reload("admin")
    return _json(report.to_dict(), 200 if report.ok else 422)


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/", status)
    app.router.add_get("/admin", status)
    app.router.add_post("/admin/reload", reload)
