"""What deployment tools need from a spec, as plain data (no I/O, no templates).

Each function takes a :class:`~iir.compile.build.Built` (the spec after load → check → compile,
exactly what ``iir validate`` and ``iir serve`` build) and returns dicts and lists that the
jinja2 templates in ``iir/export/templates`` render. Secret *values* never appear here: a secret
is named by the environment variable the spec reads it from, never expanded.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from iir.compile.build import Built
from iir.errors import ConfigError
from iir.spec.presets import PRESETS
from iir.table import Backend

__all__ = [
    "COMPOSE_FIXED",
    "DEFAULT_AGENT_PORT",
    "EnvRef",
    "compose_env",
    "env_refs",
    "helm_values_llmd",
    "helm_values_router",
    "inventory",
    "is_secret_name",
    "router_url",
    "secret_names",
]

DEFAULT_AGENT_PORT = 5000
DEFAULT_HEARTBEAT_INTERVAL = 10
LLMD_NAMESPACE = "llm-d"
LLMD_SERVICE_URL = f"http://llm-d.{LLMD_NAMESPACE}.svc.cluster.local:8000"
ROUTER_HOST = "iir-router"

# Values docker-compose.yml's services need regardless of the spec (service names, volume paths).
COMPOSE_FIXED: Mapping[str, str] = {
    "REDIS_URL": "redis://redis:6379/0",
    "SQLITE_DB_PATH": "/var/lib/iir/iir.db",
    "ROUTER_URL": "http://router:8000",
}
# Settings the chart manages itself; never taken from the user's secret.
HELM_MANAGED = frozenset({"SQLITE_DB_PATH"})

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_NAME = re.compile(r"(^EXTERNAL_.*|.*_(KEY|TOKEN|SECRET|PASSWORD|PASS|CREDENTIALS))$")
# The value of a secret field (`key:`, `api_key:`, `token:`, `admin_token:`) right before the ref.
_SECRET_FIELD = re.compile(r"""\b(?:api_key|admin_token|token|key|password)\s*:\s*["']?$""")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


@dataclass(frozen=True, slots=True)
class EnvRef:
    """A ``${NAME}`` or ``${NAME:-default}`` the spec text reads."""

    name: str
    default: str | None  # None: no default given (the variable is required)
    secret: bool


def is_secret_name(name: str) -> bool:
    """Whether a variable holds a credential (provider keys, tokens, passwords)."""
    return bool(_SECRET_NAME.match(name))


def env_refs(text: str) -> tuple[EnvRef, ...]:
    """Every distinct variable the spec text references, in order of first use.

    Whole-line comments are ignored; the first default written for a name wins. A variable is
    secret when its name says so (``EXTERNAL_*``, ``*_KEY``, ``*_TOKEN``...) or when it is the
    value of a secret field (``key:``, ``api_key:``, ``token:``, ``admin_token:``).
    """
    seen: dict[str, EnvRef] = {}
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for m in _VAR.finditer(line):
            name = m.group(1)
            secret = is_secret_name(name) or bool(_SECRET_FIELD.search(line[: m.start()]))
            if name not in seen:
                seen[name] = EnvRef(name, m.group(2), secret)
            elif secret and not seen[name].secret:
                seen[name] = EnvRef(name, seen[name].default, True)
    return tuple(seen.values())


def secret_names(built: Built) -> list[str]:
    """Secret variables the router reads for this spec: those the text references, then the
    ``EXTERNAL_<PROVIDER>_KEY`` of each cloud backend that gives no ``api_key``."""
    names = [r.name for r in env_refs(built.loaded.text) if r.secret]
    for name, b in built.loaded.spec.backends.items():
        key_env = PRESETS[b.kind].key_env
        if key_env and b.api_key is None and key_env not in names and name in built.table.backends:
            names.append(key_env)
    return names


def router_url(built: Built, env: Mapping[str, str]) -> str:
    """The URL agents register with: ``ROUTER_URL`` if set, else the spec's listen address."""
    if env.get("ROUTER_URL"):
        return env["ROUTER_URL"].rstrip("/")
    host = built.table.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{built.table.server.port}"


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _connection(host: str | None) -> dict[str, Any]:
    """Ansible connection vars for a host address (local for loopback)."""
    if not host:
        return {}
    if _is_loopback(host):
        return {"ansible_host": host, "ansible_connection": "local"}
    return {"ansible_host": host}


def _public_url(url: str) -> str:
    """A URL without credentials (``user:pass@`` is dropped)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def _backends(built: Built, kind: str) -> list[Backend]:
    return [b for b in built.table.backends.values() if b.kind == kind and not b.dynamic]


def _agent_host(b: Backend) -> dict[str, Any]:
    parts = urlsplit(b.base_url)
    host = parts.hostname
    local = host is None or _is_loopback(host)
    out: dict[str, Any] = _connection(host)
    out.update({
        "iir_agent_name": b.name,
        "iir_agent_url": _public_url(b.base_url),
        "iir_agent_bind": "127.0.0.1" if local else "0.0.0.0",
        "iir_agent_port": parts.port or DEFAULT_AGENT_PORT,
        "iir_agent_model": b.models[0],
        "iir_agent_models": list(b.models),
    })
    if b.context_window is not None:
        out["iir_agent_context_window"] = b.context_window
    return out


def _llmd_host(b: Backend) -> dict[str, Any]:
    host = urlsplit(b.base_url).hostname if b.base_url else None
    out: dict[str, Any] = _connection(host)
    out.update({
        "iir_llmd_backend": b.name,
        "iir_llmd_endpoint": _public_url(b.base_url) if b.base_url else "",
        "iir_llmd_namespace": LLMD_NAMESPACE,
        "iir_llmd_model": b.upstream_model(b.models[0]),
        "iir_llmd_served_model_names": list(b.models),
    })
    if b.context_window is not None:
        out["iir_llmd_max_model_len"] = b.context_window
    return out


def _token_env(built: Built) -> str:
    """The variable the agent registration token comes from (the spec's, else IIR_AGENT_TOKEN)."""
    line = built.loaded.source_map.locate(("agents", "token"))[0]
    text_lines = built.loaded.text.splitlines()
    if built.loaded.spec.agents.token is not None and 0 < line <= len(text_lines):
        m = _VAR.search(text_lines[line - 1])
        if m:
            return m.group(1)
    return "IIR_AGENT_TOKEN"


def inventory(built: Built, env: Mapping[str, str]) -> dict[str, Any]:
    """An Ansible inventory: the router host, one host per agent backend, one per llm-d backend.

    Shape: ``{"vars": {...}, "groups": {group: {host: hostvars}}}``; the templates turn it into
    a YAML inventory and :func:`iir.export.render.inventory_list` into dynamic-inventory JSON.
    """
    table = built.table
    url = router_url(built, env)
    names = set(table.backends)
    if ROUTER_HOST in names:
        raise ConfigError([built.loaded.source_map.diag(
            ("backends", ROUTER_HOST), f"the backend name {ROUTER_HOST!r} is reserved for the router host in the exported inventory")])
    router = _connection(urlsplit(url).hostname)
    router.update({
        "iir_router_listen": f"{table.server.host}:{table.server.port}",
        "iir_router_workers": table.server.workers,
    })
    return {
        "vars": {
            "iir_spec_file": table.source,
            "iir_spec_digest": table.digest,
            "iir_router_url": url,
            "iir_agent_token_env": _token_env(built),
            "iir_heartbeat_interval": int(env.get("IIR_HEARTBEAT_INTERVAL") or DEFAULT_HEARTBEAT_INTERVAL),
            "iir_secret_env": secret_names(built),
        },
        "groups": {
            "iir_routers": {ROUTER_HOST: router},
            "iir_agents": {b.name: _agent_host(b) for b in _backends(built, "agent")},
            "iir_llmd_clusters": {b.name: _llmd_host(b) for b in _backends(built, "llm-d")},
        },
    }


def _uses_redis(built: Built) -> bool:
    t = built.table
    return t.state.store == "redis" or (t.cache.enabled and t.cache.store == "redis")


def helm_values_router(built: Built) -> dict[str, Any]:
    """Values for ``helm/iir-router``: the spec text itself, its secrets by name, Redis on/off."""
    refs = env_refs(built.loaded.text)
    env: dict[str, str] = {"LOG_LEVEL": built.table.server.log_level}
    required: list[str] = []
    for r in refs:
        if r.secret or r.name in HELM_MANAGED or r.name in env:
            continue
        if r.name == "LLMD_ENDPOINT" or (r.name == "REDIS_URL" and _uses_redis(built)):
            continue  # set below from the charts' own services
        if r.default:
            env[r.name] = r.default
        elif r.default is None:
            required.append(r.name)
    if _backends(built, "llm-d"):
        env["LLMD_ENDPOINT"] = LLMD_SERVICE_URL
    return {
        "digest": built.table.digest,
        "source": built.table.source,
        "spec": built.loaded.text,
        "workers": built.table.server.workers,
        "redis": _uses_redis(built),
        "env": env,
        "required_env": required,
        "secret_env": secret_names(built),
    }


def helm_values_llmd(built: Built, backend: str | None = None) -> dict[str, Any]:
    """Values for ``helm/llm-d`` from one ``kind: llm-d`` backend (the only one, or ``backend``)."""
    found = _backends(built, "llm-d")
    smap = built.loaded.source_map
    if backend is not None:
        found = [b for b in found if b.name == backend]
        if not found:
            raise ConfigError([smap.diag(("backends",), f"no backend of kind llm-d named {backend!r}")])
    if not found:
        raise ConfigError([smap.diag(("backends",), "the spec declares no backend of kind llm-d")])
    if len(found) > 1:
        names = ", ".join(b.name for b in found)
        raise ConfigError([smap.diag(("backends",), f"several llm-d backends ({names}): choose one with --backend")])
    b = found[0]
    return {
        "digest": built.table.digest,
        "source": built.table.source,
        "backend": b.name,
        "model_id": b.upstream_model(b.models[0]),
        "served_names": list(b.models),
        "max_model_len": b.context_window,
    }


def compose_env(built: Built) -> list[tuple[str, str, str]]:
    """``(name, value, comment)`` lines for the Compose ``.env`` file.

    Secrets are left empty for the operator to fill in; other variables get the default the
    spec writes, or the value docker-compose.yml's services need (Redis and volume paths).
    """
    lines: list[tuple[str, str, str]] = []
    done: set[str] = set()
    for name, value in COMPOSE_FIXED.items():
        lines.append((name, value, "set for the Compose services"))
        done.add(name)
    lines.append(("LOG_LEVEL", built.table.server.log_level, "from server.log.level"))
    done.add("LOG_LEVEL")
    for r in env_refs(built.loaded.text):
        if r.name in done or r.secret:
            continue
        done.add(r.name)
        if r.default is None:
            lines.append((r.name, "", "required by the spec"))
        else:
            lines.append((r.name, r.default, "spec default"))
    for name in secret_names(built):
        if name not in done:
            done.add(name)
            lines.append((name, "", "secret: fill in, never commit"))
    return lines
