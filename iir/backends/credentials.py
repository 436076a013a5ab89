"""The credentials the router sends upstream, and masking them out of upstream error text.

An upstream may echo what it received (a key in "invalid API key sk-...", a header value in a
validation message). Before an upstream's error text reaches a client or a log line, every
credential of every configured backend is replaced by ``***``. Credentials are a backend's
``api_key`` and its header values, except headers known to carry no secret (protocol
versions, content types, attribution); for ``<scheme> <token>`` values (``Bearer ...``) the
token alone is masked too. Values shorter than :data:`MIN_SECRET` are not masked (they would
mangle ordinary words and are no real credential).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from iir.table import Backend

__all__ = ["MASK", "MIN_SECRET", "backend_secrets", "mask_secrets", "mask_secrets_bytes", "redact_url",
           "url_password"]

MIN_SECRET = 6
MASK = "***"
#: Header names whose values are configuration, not credentials.
PUBLIC_HEADERS = frozenset({
    "accept", "anthropic-beta", "anthropic-version", "content-type", "http-referer", "referer",
    "user-agent", "x-openrouter-title", "x-title",
})


def url_password(url: str) -> str | None:
    """The password of a ``scheme://user:password@host/...`` URL, if it has one."""
    try:
        return urlsplit(url).password or None
    except ValueError:
        return None


def redact_url(url: str, replacement: str = MASK) -> str:
    """``url`` with its userinfo password (if any) replaced: what the registry and /admin show."""
    if "@" not in url or url_password(url) is None:
        return url
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{replacement}@{hostport}"))


def backend_secrets(backend: Backend) -> tuple[str, ...]:
    """Every credential value ``backend`` sends upstream (longest first, so a ``Bearer <t>``
    value is masked whole before its token)."""
    found: set[str] = set()
    if backend.api_key:
        found.add(backend.api_key)
    password = url_password(backend.base_url)
    if password:
        found.add(password)
    for name, value in backend.headers:
        if name.lower() in PUBLIC_HEADERS or not value:
            continue
        found.add(value)
        scheme, _, token = value.partition(" ")
        if token and scheme.isalpha():
            found.add(token.strip())
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET), key=len, reverse=True))


def _all_secrets(backends: Iterable[Backend]) -> list[str]:
    return sorted({s for b in backends for s in backend_secrets(b)}, key=len, reverse=True)


def mask_secrets(text: str, backends: Iterable[Backend]) -> str:
    """``text`` with every credential of ``backends`` replaced by ``***``."""
    for secret in _all_secrets(backends):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_secrets_bytes(data: bytes, backends: Iterable[Backend]) -> bytes:
    """:func:`mask_secrets` for bytes on their way to a client (an SSE block)."""
    for secret in _all_secrets(backends):
        raw = secret.encode()
        if raw in data:
            data = data.replace(raw, MASK.encode())
    return data
