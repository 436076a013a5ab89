"""The ``iir`` subcommands, one module per command group (registered by :mod:`iir.cli`)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final

# Every group carries these itself, not only the root: click caches a command's help option the first
# time it is built, so a group first invoked on its own would otherwise lose ``-h`` for good.
CONTEXT_SETTINGS: Final[MappingProxyType[str, Any]] = MappingProxyType(
    {"help_option_names": ("-h", "--help"), "max_content_width": 100})
