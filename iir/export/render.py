"""Render the export data through the jinja2 templates kept in ``iir/export/templates``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jinja2

from iir.compile.build import Built
from iir.export import data

__all__ = ["CHARTS", "EXPORTS", "compose_env", "helm_values", "inventory", "inventory_host", "inventory_list"]

EXPORTS = ("inventory", "helm-values", "compose-env")
CHARTS = ("iir-router", "llm-d")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("iir.export", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # YAML and dotenv output, not HTML
        keep_trailing_newline=True,
    )
    # JSON scalars are valid YAML scalars: safe quoting of any string.
    env.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    return env


def _render(template: str, context: Mapping[str, Any]) -> str:
    text = _environment().get_template(template).render(**context)
    return text if text.endswith("\n") else text + "\n"


def inventory(built: Built, env: Mapping[str, str]) -> str:
    """The static YAML inventory (``ansible-playbook -i FILE``)."""
    inv = data.inventory(built, env)
    return _render("inventory.yml.j2", {"source": built.table.source, "digest": built.table.digest, **inv})


def inventory_list(built: Built, env: Mapping[str, str]) -> str:
    """Ansible dynamic-inventory JSON (the ``--list`` protocol, with ``_meta.hostvars``)."""
    inv = data.inventory(built, env)
    out: dict[str, Any] = {"all": {"children": list(inv["groups"]), "vars": inv["vars"]}}
    hostvars: dict[str, Any] = {}
    for group, hosts in inv["groups"].items():
        out[group] = {"hosts": list(hosts)}
        hostvars.update(hosts)
    out["_meta"] = {"hostvars": hostvars}
    return json.dumps(out, indent=2, ensure_ascii=False) + "\n"


def inventory_host(built: Built, env: Mapping[str, str], host: str) -> str:
    """Ansible dynamic-inventory ``--host NAME``: that host's variables (``{}`` if unknown)."""
    for hosts in data.inventory(built, env)["groups"].values():
        if host in hosts:
            return json.dumps(hosts[host], indent=2, ensure_ascii=False) + "\n"
    return "{}\n"


def helm_values(built: Built, chart: str = "iir-router", backend: str | None = None) -> str:
    """Values for one of the charts under ``helm/``."""
    if chart == "iir-router":
        return _render("values-iir-router.yaml.j2", data.helm_values_router(built))
    if chart == "llm-d":
        return _render("values-llm-d.yaml.j2", data.helm_values_llmd(built, backend))
    raise ValueError(f"unknown chart {chart!r}; expected one of {', '.join(CHARTS)}")


def compose_env(built: Built) -> str:
    """The ``.env`` file docker-compose.yml reads."""
    return _render("compose.env.j2", {"source": built.table.source, "digest": built.table.digest,
                                      "lines": data.compose_env(built)})
