"""Human units used in the spec: durations (``30s``), sizes (``4MiB``), rates (``60/min``).

Each parser accepts the documented string form (or a plain number) and raises ``ValueError``
with a message meant for the operator; pydantic turns it into a diagnostic.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

__all__ = ["Duration", "Rate", "Size", "parse_duration", "parse_rate", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB|k|K|M|G)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "k": 1000, "K": 1000,
               "M": 1000**2, "G": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60,
        "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
_MULT = {"": 1, "k": 1000, "K": 1000, "m": 1_000_000, "M": 1_000_000}


def parse_duration(value: object) -> float:
    """``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"2d"`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 500ms")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}: use a number with ms, s, m, h or d (e.g. 30s)")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """``"4MiB"``, ``"512KB"``, ``"1G"`` or a number of bytes → bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4MiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    else:
        raise ValueError(f"invalid size {value!r}: use a number with B, KB, MB, GB, KiB, MiB or GiB")
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def parse_rate(value: object) -> tuple[int, float]:
    """``"60/min"``, ``"100k/min"``, ``"10/s"``, ``"1000/5m"`` → (count, window seconds)."""
    if isinstance(value, tuple) and len(value) == 2:
        return int(value[0]), float(value[1])
    if not isinstance(value, str) or not (m := _RATE.match(value)):
        raise ValueError(f"invalid rate {value!r}: use COUNT/UNIT such as 60/min, 100k/min or 10/s")
    count = int(float(m.group(1)) * _MULT[m.group(2)])
    window = (int(m.group(3)) if m.group(3) else 1) * _PER[m.group(4)]
    if count <= 0 or window <= 0:
        raise ValueError("a rate needs a positive count and window")
    return count, float(window)


Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(
    {"anyOf": [{"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"},
               {"type": "number", "minimum": 0}]})]
Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 1}]})]
Rate = Annotated[tuple[int, float], BeforeValidator(parse_rate), WithJsonSchema(
    {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[kKmM]?\s*/\s*\d*\s*[a-z]+\s*$"})]
