"""Auth stage: client keys (``Authorization: Bearer`` or ``x-api-key``) and per-key model globs
(for declared models; aliases are checked per backend by the ``allowed-by-key`` filter).

Keys are looked up by the SHA-256 digest of the presented value in ``table.auth``, so the
comparison never runs over the secret itself (timing-safe) and no key is ever held in clear.
With no keys configured the router is open (announced at start-up by the server).
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from iir.errors import AuthenticationError, PermissionDeniedError
from iir.pipeline.context import Next, RequestContext, Stage
from iir.table import AuthTable, ClientKey

__all__ = ["admin_allowed", "make_stage", "presented_key", "resolve_key"]


def presented_key(request: web.Request) -> str | None:
    """The credential a client sent, if any."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


def resolve_key(auth: AuthTable, presented: str | None) -> ClientKey | None:
    """The client key for a presented credential; raises 401 when keys are required and it fails."""
    if auth.open:
        return None
    if presented is None:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key'")
    key = auth.keys_by_sha256.get(hashlib.sha256(presented.encode()).digest())
    if key is None:
        raise AuthenticationError("invalid API key")
    return key


def admin_allowed(auth: AuthTable, request: web.Request) -> bool:
    """Admin API access: the admin token when one is set, otherwise loopback clients only."""
    if auth.admin_token_sha256 is None:
        remote = request.remote or ""
        return remote in ("127.0.0.1", "::1") or remote.startswith("127.")
    presented = presented_key(request)
    if presented is None:
        return False
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), auth.admin_token_sha256)


async def _auth(ctx: RequestContext, nxt: Next) -> web.StreamResponse:
    key = resolve_key(ctx.table.auth, presented_key(ctx.http))
    # A model some backend declares is refused here. Any other name (an alias that only routes
    # resolve, such as `auto`) is left to the select stage's `allowed-by-key` filter, which keeps
    # only the backends whose served model this key may use (403 if none is left).
    if key is not None and not key.allows(ctx.model) and ctx.model in ctx.table.model_index:
        raise PermissionDeniedError(f"this API key may not use model {ctx.model!r}", param="model")
    ctx.key = key
    return await nxt(ctx)


def make_stage(app: web.Application) -> Stage:
    return _auth
