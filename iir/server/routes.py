"""Public routes: the OpenAI endpoints, model listing, liveness and readiness."""

from __future__ import annotations

import orjson
from aiohttp import web

from iir.errors import IIRError
from iir.pipeline.auth import presented_key, resolve_key
from iir.pipeline.route import model_not_found
from iir.pipeline.services import SERVICES
from iir.server.handlers import error_response, handler_for
from iir.server.state import TABLE_STATE
from iir.table import RoutingTable

__all__ = ["add_routes"]


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _models(app: web.Application, table: RoutingTable) -> dict[str, dict[str, object]]:
    created = 0
    out: dict[str, dict[str, object]] = {}
    for model in table.models:
        owners = table.model_index.get(model, ())
        out[model] = {"id": model, "object": "model", "created": created,
                      "owned_by": owners[0] if owners else "iir"}
    for agent in app[SERVICES].live_agents(table, None):
        for model in agent.models:
            out.setdefault(model, {"id": model, "object": "model", "created": created, "owned_by": agent.name})
    return out


def _visible_models(request: web.Request, table: RoutingTable) -> dict[str, dict[str, object]]:
    """The models this client may see. With client keys configured the listing needs a key, as
    the model endpoints do (OpenAI answers 401 too; the list names backends and agents); a key
    limited to some models sees those, plus the aliases only routes resolve (``auto``)."""
    key = resolve_key(table.auth, presented_key(request))  # 401 when keys are required
    models = _models(request.app, table)
    if key is None or key.models_re is None:
        return models
    return {m: v for m, v in models.items() if key.allows(m) or v["owned_by"] == "iir"}


async def list_models(request: web.Request) -> web.Response:
    try:
        models = _visible_models(request, request.app[TABLE_STATE].table)
    except IIRError as e:
        return error_response(e)
    return _json({"object": "list", "data": list(models.values())})


async def get_model(request: web.Request) -> web.Response:
    table = request.app[TABLE_STATE].table
    model = request.match_info["model"]
    try:
        found = _visible_models(request, table).get(model)
    except IIRError as e:
        return error_response(e)
    if found is None:
        return error_response(model_not_found(table, model))
    return _json(found)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    table = request.app[TABLE_STATE].table
    routable = [b.name for b in table.backends.values() if b.configured]
    agents = request.app[SERVICES].live_agents(table, None)
    ready = bool(routable or agents)
    return _json({"status": "ready" if ready else "not ready", "spec": table.digest[:12],
                  "routable_backends": routable + [a.name for a in agents]}, 200 if ready else 503)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", handler_for("chat"))
    app.router.add_post("/v1/completions", handler_for("completions"))
    app.router.add_post("/v1/embeddings", handler_for("embeddings"))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
