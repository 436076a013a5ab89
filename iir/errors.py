"""The iir error tree.

Every error a user can see is an :class:`IIRError`. Each class carries the HTTP status and
the OpenAI error ``type``/``code`` it maps to; only the HTTP boundary turns them into JSON
(``{"error": {"message", "type", "param", "code"}}``). Config errors carry diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "Diagnostic",
    "IIRError",
    "ModelNotFoundError",
    "NoBackendError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RequestTimeoutError",
    "UnsupportedMediaTypeError",
    "UpstreamError",
    "UpstreamTimeoutError",
]


class IIRError(Exception):
    """Base of every error iir reports. Subclasses set the HTTP mapping."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def to_openai(self) -> dict[str, object]:
        """The OpenAI error envelope for this error."""
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


class BadRequestError(IIRError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(IIRError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(IIRError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class ModelNotFoundError(IIRError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RequestTimeoutError(IIRError):
    """The client did not send its request body in time (``server.body_timeout``)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLargeError(IIRError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaTypeError(IIRError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimitedError(IIRError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(IIRError):
    """The backend answered with an error or an unreadable payload."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None,
                 retryable: bool = False, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.upstream_status = upstream_status
        self.retryable = retryable


class UpstreamTimeoutError(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class NoBackendError(IIRError):
    status = 503
    type = "service_unavailable"
    code = "no_backend_available"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One config finding: ``file:line:col path: message``. Lines and columns are 1-based."""

    file: str
    line: int
    col: int
    path: str
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        path = f" {self.path}:" if self.path else ""
        tag = "" if self.severity == "error" else " warning:"
        return f"{where}{path}{tag} {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "col": self.col, "path": self.path,
                "message": self.message, "severity": self.severity}


@dataclass
class ConfigError(Exception):
    """The spec could not be loaded, validated or compiled. Holds every diagnostic at once."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(d) for d in self.diagnostics)
