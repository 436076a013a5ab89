"""docs/observability.md describes every metric and log field; the Grafana dashboard uses real metrics."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

from iir.observability import logging as iir_logging
from iir.observability.metrics import Metrics
from iir.pipeline.context import RequestContext
from iir.pipeline.observe import request_fields

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _exposed_names(table) -> set[str]:
    m = Metrics()
    m.on_spec_loaded(table)
    names = set()
    for family in m.registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
    return names


def _documented(text: str) -> str:
    return text.replace("\\_", "_")


def test_every_metric_is_documented(table) -> None:
    doc = _documented((DOCS / "observability.md").read_text())
    names = _exposed_names(table)
    assert len(names) >= 19
    missing = [n for n in sorted(names) if f"`{n}`" not in doc]
    assert not missing, f"undocumented metrics: {missing}"
    documented = set(re.findall(r"^\| `(iir_[a-z_]+)`", doc, re.M))
    assert documented == names, f"documented but not exposed: {documented - names}"


def test_every_request_log_field_is_documented(table) -> None:
    doc = (DOCS / "observability.md").read_text()
    ctx = RequestContext(http=None, table=table, request_id="r", endpoint="chat")  # type: ignore[arg-type]
    fields = set(request_fields(ctx, 200, "", 0.1, None, 0.0)) | {"ts", "level", "logger", "event"}
    missing = [f for f in sorted(fields) if f"| `{f}` |" not in doc]
    assert not missing, f"undocumented log fields: {missing}"


def test_every_lifecycle_event_and_field_is_documented() -> None:
    doc = (DOCS / "observability.md").read_text()
    src = inspect.getsource(iir_logging)
    events = set(re.findall(r'emit\(logger, [^,]+, "([a-z_]+)"', src)) | set(
        re.findall(r'logging\.\w+, "([a-z_]+)",', src))
    assert {"startup", "shutdown", "reload", "agent_registered", "agent_heartbeat_expired"} <= events
    for event in events:
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{event}` |")), None)
        assert row is not None, f"lifecycle event {event} undocumented"
    for fn in (iir_logging.log_startup, iir_logging.log_reload, iir_logging.log_shutdown,
               iir_logging.log_agent_registered, iir_logging.log_heartbeat_expired):
        for key in re.findall(r'"([a-z_]+)":', inspect.getsource(fn)):
            assert f"`{key}`" in doc, f"{fn.__name__} field {key} undocumented"


def test_dashboard_is_built_on_real_metrics(table) -> None:
    dash = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    names = _exposed_names(table)
    valid = names | {n + s for n in names for s in ("_bucket", "_sum", "_count")}
    used = {n for e in exprs for n in re.findall(r"\biir_[a-z_]+", e)}
    assert used and used <= valid, f"dashboard queries unknown metrics: {used - valid}"
    assert names - {re.sub(r"_(bucket|sum|count)$", "", u) for u in used} == set()
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("request rate", "error", "latency p50 / p95 / p99", "time to first token", "tokens",
                   "cache hit ratio", "rate-limit", "fallbacks", "backend health", "agents", "reloads"):
        assert needed in titles, needed
    for e in exprs:
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
