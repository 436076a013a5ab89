"""The aiohttp application factory: state under typed ``web.AppKey``s, resources in
``cleanup_ctx`` (opened in order, closed in reverse), the pipeline built once at start-up."""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import web

from iir.errors import IIRError, ModelNotFoundError
from iir.pipeline.chain import RESOURCES, STAGES, Resource, StageFactory, build_chain
from iir.pipeline.parse import BODY_READS, BodyReads
from iir.pipeline.services import CURRENT_TABLE, SERVICES
from iir.policies.runtime import POLICIES
from iir.server import anthropic_ingress, metrics_api
from iir.server.admin import add_admin_routes
from iir.server.handlers import CHAIN, HeaderTooLargeError, error_response, request_id
from iir.server.reload import watcher_ctx
from iir.server.routes import add_routes
from iir.server.state import TABLE_STATE, ReloadReport, TableState
from iir.table import Backend, RoutingTable

__all__ = ["MAX_HEADER_FIELD", "create_app"]

log = logging.getLogger("iir.server")

#: Largest single header we accept (the listener is configured larger so that bigger ones
#: still reach us and get a clean OpenAI-shaped 431 instead of a parser error).
MAX_HEADER_FIELD = 16 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _MethodNotAllowed(IIRError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


@web.middleware
async def boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Header limits and aiohttp's own HTTP errors (404 path, 405) in OpenAI's shape."""
    for name, value in request.raw_headers:
        if len(value) + len(name) > MAX_HEADER_FIELD:
            return error_response(HeaderTooLargeError(
                f"header {name[:64].decode('latin-1')!r} is {len(value)} bytes; at most {MAX_HEADER_FIELD} accepted"),
                {"x-request-id": request_id(request)})
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error_response(ModelNotFoundError(f"no such endpoint: {request.method} {request.path}",
                                                 code="unknown_url"), {"x-request-id": request_id(request)})
    except web.HTTPMethodNotAllowed as e:
        return error_response(_MethodNotAllowed(f"method {request.method} not allowed on {request.path}; "
                                                f"use {', '.join(sorted(e.allowed_methods))}"),
                              {"x-request-id": request_id(request), "allow": ", ".join(sorted(e.allowed_methods))})


_LiveAgents = Callable[[RoutingTable, "str | None"], tuple[Backend, ...]]
_AgentQueue = Callable[[str], "int | None"]


def _optional_agents_api(app: web.Application) -> tuple[_LiveAgents, _AgentQueue] | None:
    """Wire the agent registry (iir.server.agents_api) when present; returns the live-agent lookup
    and the heartbeat queue-length lookup (least-loaded reads it through the health board)."""
    try:
        agents_api = importlib.import_module("iir.server.agents_api")
    except ModuleNotFoundError as e:
        if e.name != "iir.server.agents_api":
            raise
        return None
    agents_api.setup(app, lambda: app[TABLE_STATE].table)
    key = agents_api.AGENTS

    def live_agents(table: RoutingTable, model: str | None) -> tuple[Backend, ...]:
        return tuple(app[key].snapshot().candidates(model, table.agents.heartbeat_timeout))

    def agent_queue(backend_name: str) -> int | None:
        return app[key].snapshot().queue_of(backend_name)

    return live_agents, agent_queue


def create_app(state: TableState, *, stages: Sequence[StageFactory] = STAGES,
               resources: Sequence[Resource] = RESOURCES, watch: bool = True) -> web.Application:
    """The router app for one process. ``watch``: reload when the spec file changes."""
    app = web.Application(middlewares=[boundary], client_max_size=1024 * 1024)
    app[TABLE_STATE] = state
    app[CURRENT_TABLE] = lambda: state.table
    app[BODY_READS] = BodyReads()

    async def end_body_reads(app: web.Application) -> None:
        # runs before the drain: a client still sending its body gets 408 now instead of
        # holding the shutdown for up to drain_timeout
        app[BODY_READS].end()

    app.on_shutdown.append(end_body_reads)
    metrics_api.setup(app, state)
    for resource in resources:
        app.cleanup_ctx.append(resource)
    agents = _optional_agents_api(app)

    async def wire(app: web.Application) -> AsyncIterator[None]:
        policies = app.get(POLICIES)
        if agents is not None:
            app[SERVICES].live_agents = agents[0]
            if policies is not None:
                policies.health.queue_source = agents[1]  # heartbeat queue lengths → least-loaded
        app[CHAIN] = build_chain(app, stages)

        def warm_tokens(report: ReloadReport) -> None:  # a reload may bring the first OpenAI-family model
            if policies is not None and report.ok and report.changed:
                policies.warm_tokens(state.table)

        state.on_report.append(warm_tokens)
        yield
        state.on_report.remove(warm_tokens)

    app.cleanup_ctx.append(wire)
    if watch:
        app.cleanup_ctx.append(watcher_ctx)
    add_routes(app)
    add_admin_routes(app)
    anthropic_ingress.setup(app)
    return app
