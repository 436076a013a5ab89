"""Map a provider's HTTP error to an :class:`~iir.errors.UpstreamError` the router can act on.

One policy for every provider adapter: 429, 529 (Anthropic "overloaded"), 402 (billing) and 5xx are
retryable (the router falls back to the next candidate before the first byte went out);
400/401/403/404 are not. The client-facing status: 400/413/422 keep theirs (the request is
at fault), 429 stays 429 with ``retry-after``, 529 becomes 503, anything else 502.
"""

from __future__ import annotations

from collections.abc import Mapping

from iir.backends.base import parse_retry_after
from iir.errors import UpstreamError

__all__ = ["malformed", "upstream_http_error"]

_CLIENT_FAULT = {400: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error"}


def upstream_http_error(provider: str, status: int, message: str, *, upstream_type: str | None = None,
                        headers: Mapping[str, str] | None = None) -> UpstreamError:
    """The typed error for an HTTP error answer of ``provider`` (message already extracted)."""
    retry_after = None
    if headers is not None:
        retry_after = headers.get("retry-after") or headers.get("Retry-After")
    retryable = status in (402, 408, 429, 529) or status >= 500  # 402: out of credits there, not elsewhere
    code = upstream_type or f"http_{status}"
    err = UpstreamError(f"{provider}: {message}" if message else f"{provider} answered HTTP {status}",
                        upstream_status=status, retryable=retryable, code=code,
                        headers={"retry-after": retry_after} if retry_after and status in (429, 529, 503) else None)
    err.retry_after = parse_retry_after(retry_after)  # type: ignore[attr-defined]  # read by the relay
    if status in _CLIENT_FAULT:
        err.status, err.type = status, _CLIENT_FAULT[status]
    elif status == 429:
        err.status, err.type = 429, "rate_limit_error"
    elif status in (529, 503):
        err.status, err.type = 503, "service_unavailable"
    elif status in (401, 403):
        err.message = f"{provider} rejected the router's credentials (HTTP {status}): {message}"
    return err


def malformed(provider: str, what: str) -> UpstreamError:
    """A 502 for an unreadable upstream payload (missing fields, bad JSON, unknown shapes).

    Retryable: another candidate may well answer properly (only before the first byte).
    """
    return UpstreamError(f"{provider} sent a malformed response: {what}", upstream_status=None,
                         retryable=True, code="upstream_malformed_response")
