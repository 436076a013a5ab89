"""Defensive readers for values in upstream JSON (shared by the provider translators).

An upstream may send anything where a number, object or list is expected; these readers turn
an unexpected type into a neutral default so a translator never crashes on it (a payload that
is unreadable as a whole is reported by :func:`iir.backends.provider_errors.malformed`).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["as_dict", "as_int", "as_list"]


def as_int(value: Any, default: int = 0) -> int:
    """A token count / index / code from upstream JSON; anything not a finite number is ``default``."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return default


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty dict."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else an empty list."""
    return value if isinstance(value, list) else []
