"""Agent commands: ``iir agent`` (serve a model), ``iir agents list``, ``iir run-demo``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from redis.exceptions import RedisError

from iir.agent.command import agent
from iir.cmd import CONTEXT_SETTINGS
from iir.compile.registry import RegistryError
from iir.errors import ConfigError
from iir.policies.agents import AgentEntry, RedisAgentDirectory
from iir.server.workers import StopSignals
from iir.table import RoutingTable

__all__ = ["agent", "agents", "commands", "run_demo"]



@click.group("agents", context_settings=dict(CONTEXT_SETTINGS))
def agents() -> None:
    """Registered agents."""


@agents.command("list")
@click.option("--spec", "spec_file", default="iir.yaml", show_default=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def agents_list(spec_file: str, as_json: bool) -> None:
    """Agents registered with the router of SPEC, with their state (live / stale).

    Read from Redis when the spec's state.store is redis, else from the SQLite registry."""
    table = _load_table(spec_file)
    try:
        entries, now = asyncio.run(_read_agents(table))
    except (OSError, RegistryError, RedisError) as e:
        raise click.ClickException(f"cannot read the agent directory: {e}") from None
    timeout = table.agents.heartbeat_timeout
    rows: list[dict[str, Any]] = [{"id": e.id, "name": e.name, "url": e.url, "models": list(e.models),
             "state": "live" if now - e.last_heartbeat <= timeout else "stale",
             "last_heartbeat_seconds_ago": round(max(0.0, now - e.last_heartbeat), 1),
             "queue_length": e.queue_length, "in_flight": e.in_flight, "context_window": e.context_window,
             "engine": e.engine, "device": e.device} for e in entries]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no agents registered")
        return
    header = ("ID", "STATE", "LAST SEEN", "MODELS", "QUEUE", "URL")
    table_rows = [(r["id"], r["state"], f"{r['last_heartbeat_seconds_ago']}s ago", ",".join(r["models"]),
                   f"{r['queue_length']}+{r['in_flight']}", r["url"]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table_rows, strict=False)]
    for line in (header, *table_rows):
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


def _load_table(spec_file: str) -> RoutingTable:
    from iir.compile.build import build_table

    try:
        return build_table(spec_file, os.environ).table
    except ConfigError as e:
        for d in e.diagnostics:
            click.echo(str(d), err=True)
        sys.exit(1)
    except OSError as e:
        raise click.ClickException(f"cannot read {spec_file}: {e}") from None


async def _read_agents(table: RoutingTable) -> tuple[list[AgentEntry], float]:
    """Every registered agent and the current time on the directory's clock."""
    if table.state.store == "redis" and table.state.redis_url:
        from redis.asyncio import Redis

        client = Redis.from_url(table.state.redis_url)
        try:
            directory = RedisAgentDirectory(client)
            await directory.refresh()
            snap = directory.snapshot()
            return list(snap.entries), snap.now()
        finally:
            await client.aclose()
    from iir.compile.registry import Registry

    if not Path(table.state.registry).exists():  # no router has run here: nothing to list, nothing to create
        return [], time.time()
    with Registry(table.state.registry) as reg:
        records = reg.list_agents()
    return [AgentEntry(id=r.id, url=r.url, models=r.models, name=str(r.load.get("name", r.id)),
                       context_window=r.context_window, capabilities=r.capabilities,
                       engine=str(r.load.get("engine", "")), device=str(r.load.get("device", "")),
                       registered_at=r.registered_at, last_heartbeat=r.last_heartbeat,
                       queue_length=int(r.load.get("queue_length", 0)), in_flight=int(r.load.get("in_flight", 0)))
            for r in records if r.state != "gone"], time.time()


@click.command("run-demo")
@click.option("--spec", "spec_file", default="iir.yaml", show_default=True, type=click.Path(dir_okay=False))
def run_demo(spec_file: str) -> None:
    """Start the demo agent (tiny model) and the router on SPEC; Ctrl-C stops both."""
    table = _load_table(spec_file)
    agent_url = next((b.base_url for b in table.backends.values()
                      if b.kind == "agent" and "tiny-demo" in b.models), "http://127.0.0.1:5000")
    agent_port = urlsplit(agent_url).port or 5000
    host = table.server.host if table.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    router_url = f"http://{host}:{table.server.port}"
    # something else answering on either port would pass for the demo's own process: refuse first
    _require_free("127.0.0.1", agent_port, "the demo agent", f"the laptop backend's url in {spec_file}")
    _require_free(table.server.host, table.server.port, "the router", f"server.listen in {spec_file}")
    procs: list[subprocess.Popen[bytes]] = []
    # a hangup (terminal closed, SSH dropped) stops the demo like Ctrl-C: by default it would kill
    # this process and the agent but leave the router (which reloads on SIGHUP) running orphaned
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    try:
        click.echo(f"==> starting the demo agent on {agent_url} (first run builds the tiny model)", err=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "iir", "agent", "--demo", "--port", str(agent_port)]))
        _wait_http(f"{agent_url}/health", procs[0], "the demo agent", 900)
        click.echo(f"==> starting the router on {router_url} with {spec_file}", err=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "iir", "serve", "--spec", spec_file]))
        _wait_http(f"{router_url}/healthz", procs[1], "the router", 120)
        click.echo(DEMO_BANNER.format(router=router_url, agent=agent_url))
        stopping: list[int] = []
        signals = StopSignals()

        def on_stop_signal(signum: int, _frame: object) -> None:
            if signals.forces(signum):  # a second Ctrl-C while they drain: do not wait
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                click.echo("iir run-demo: second Ctrl-C: killed the agent and the router without waiting "
                           "for their drain", err=True)
                raise SystemExit(130)
            stopping.append(signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # Ctrl-C also reaches the children: exit quietly
            signal.signal(sig, on_stop_signal)
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        if stopping:
            click.echo("\niir run-demo: stopping", err=True)
            return
        dead = next(p for p in procs if p.poll() is not None)
        click.echo(f"iir run-demo: {'agent' if dead is procs[0] else 'router'} exited "
                   f"(code {dead.returncode}); stopping", err=True)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C while starting
        click.echo("\niir run-demo: stopping", err=True)
    finally:
        _stop_all(procs)


DEMO_BANNER = """
iir demo is up.
  router: {router}   (OpenAI-compatible: {router}/v1)
  agent:  {agent}    (tiny model `tiny-demo`, direct: {agent}/infer)

Try:
  curl -s {router}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "tiny-demo", "messages": [{{"role": "user", "content": "Hi!"}}], "temperature": 0}}'

Ctrl-C stops both.
"""


def _require_free(host: str, port: int, what: str, where: str) -> None:
    """Exit 1 with one line when ``host:port`` cannot be bound (in use, or not an address here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            click.echo(f"iir run-demo: cannot start {what} on {host}:{port}: {reason} "
                       f"(stop what runs there, or change {where})", err=True)
            sys.exit(1)


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    """Wait until ``url`` answers (any HTTP status) or ``proc`` exits; exit 1 on failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            click.echo(f"iir run-demo: {what} exited with code {proc.returncode}", err=True)
            sys.exit(1)
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    click.echo(f"iir run-demo: {what} did not answer {url} within {timeout:.0f} s", err=True)
    sys.exit(1)


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


commands = [agent, agents, run_demo]
