"""The ``iir agent`` command (also ``python -m iir.agent``): serve one model on this machine."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import click

__all__ = ["agent"]


def _setup_logging() -> None:
    level = os.environ.get("LOG_LEVEL", "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.command("agent")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="Agent config YAML (model map, engine, queue, registration...).")
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [default: 5000; 0 = any free port].")
@click.option("--model", default=None, help="Model name from the config's `models`, a local folder or a hub id.")
@click.option("--engine", type=click.Choice(["transformers", "vllm"]), default=None, help="Inference engine.")
@click.option("--device", default=None, help="auto (MPS, then CUDA, then CPU), cpu, cuda, cuda:N or mps.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default=None)
@click.option("--max-queue", type=int, default=None, help="Most requests admitted at once; more get 503.")
@click.option("--context-window", type=int, default=None, help="Override the model's context window.")
@click.option("--router-url", default=None, help="Register with this router (also ROUTER_URL).")
@click.option("--name", default=None, help="Name shown in `iir agents list`.")
@click.option("--vllm-url", default=None, help="With --engine vllm: a running vLLM server instead of starting one.")
@click.option("--demo", is_flag=True, help="Build (once, cached) and serve the tiny demo model as `tiny-demo`.")
def agent(config_file: str | None, host: str | None, port: int | None, model: str | None, engine: str | None,
          device: str | None, dtype: str | None, max_queue: int | None, context_window: int | None,
          router_url: str | None, name: str | None, vllm_url: str | None, demo: bool) -> None:
    """Serve one model on this machine; register with a router when ROUTER_URL is set."""
    from iir.agent.config import load_agent_config
    from iir.agent.engine import EngineStartError
    from iir.agent.runner import serve_agent

    _setup_logging()
    overrides: dict[str, object] = {"host": host, "port": port, "model": model, "engine": engine,
                                    "device": device, "dtype": dtype, "max_queue": max_queue,
                                    "context_window": context_window, "router_url": router_url, "name": name}
    if demo:
        from iir.agent.demo_model import DEMO_MODEL_NAME, ensure_tiny_model

        click.echo("iir agent: preparing the tiny demo model (built once, then cached)", err=True)
        folder = ensure_tiny_model(progress=lambda msg: click.echo(f"  {msg}", err=True))
        overrides.update(model=DEMO_MODEL_NAME, models={DEMO_MODEL_NAME: str(folder)})
    try:
        config = load_agent_config(config_file, os.environ, overrides)
        if vllm_url:
            config = config.model_copy(update={"vllm": config.vllm.model_copy(update={"url": vllm_url})})
    except ValueError as e:
        raise click.ClickException(str(e)) from None

    def ready(url: str) -> None:
        click.echo(f"iir agent: serving {config.served_name()} on {url} "
                   f"(POST {url}/infer, {url}/v1/chat/completions)", err=True)

    try:
        asyncio.run(serve_agent(config, on_ready=ready))
    except EngineStartError as e:
        click.echo(f"iir agent: error: {e}", err=True)
        sys.exit(2)
    except OSError as e:  # e.g. the port is taken
        click.echo(f"iir agent: error: cannot listen on {config.host}:{config.port}: {e.strerror or e}", err=True)
        sys.exit(2)
