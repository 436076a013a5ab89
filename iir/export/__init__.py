"""Deployment exports derived from the spec: Ansible inventory, Helm values, Compose env.

Used by ``iir export`` (:mod:`iir.cmd.export`). Pure data in :mod:`iir.export.data`, jinja2
rendering in :mod:`iir.export.render`, templates in ``iir/export/templates``.
"""

from iir.export.render import (
    CHARTS,
    EXPORTS,
    compose_env,
    helm_values,
    inventory,
    inventory_host,
    inventory_list,
)

__all__ = ["CHARTS", "EXPORTS", "compose_env", "helm_values", "inventory", "inventory_host", "inventory_list"]
