"""Fixtures for the observability tests: a compiled table from a small real spec."""

from __future__ import annotations

import pytest

from iir.compile.build import build_text
from iir.table import RoutingTable

SPEC = """
version: 1
auth:
  keys:
    - {name: ci, key: "${IIR_KEY_CI}", models: ["*"]}
backends:
  local-a: {kind: vllm, url: "http://127.0.0.1:9/v1", models: [tiny]}
  local-b: {kind: vllm, url: "http://127.0.0.1:9/v1", models: [tiny]}
routes:
  - name: tiny-route
    match: {model: tiny}
    to: [local-a, local-b]
  - name: gpt-glob
    match: {model: "gpt-*"}
    to: [local-b]
"""

CLIENT_KEY = "sk-test-client-key-0123456789"


@pytest.fixture
def table() -> RoutingTable:
    return build_text(SPEC, "iir.yaml", {"IIR_KEY_CI": CLIENT_KEY}).table


@pytest.fixture
def restore_logging():
    """Put the root logger back as it was (configure_logging changes process-wide logging)."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    iir_level = logging.getLogger("iir").level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    logging.getLogger("iir").setLevel(iir_level)
