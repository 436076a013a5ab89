"""Protocol → adapter lookup. To add a protocol: one line in ``_MODULES``."""

from __future__ import annotations

import importlib
from types import MappingProxyType

from iir.backends.base import Adapter

__all__ = ["adapter_for", "load_adapters"]

_MODULES = MappingProxyType({
    "openai": "iir.backends.openai_openai",
    "agent": "iir.backends.openai_agent",
    "anthropic": "iir.backends.openai_anthropic",
    "gemini": "iir.backends.openai_gemini",
})


def load_adapters() -> MappingProxyType[str, Adapter]:
    """Every adapter whose module is present, by protocol (called once per app at start-up)."""
    found: dict[str, Adapter] = {}
    for protocol, module in _MODULES.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but one of its imports is missing: a real bug
                raise
            continue
        adapter = getattr(mod, "ADAPTER", None)
        if isinstance(adapter, Adapter):  # a translation module not (yet) exposing an adapter is skipped
            found[protocol] = adapter
    return MappingProxyType(found)


def adapter_for(adapters: MappingProxyType[str, Adapter], protocol: str) -> Adapter | None:
    return adapters.get(protocol)
