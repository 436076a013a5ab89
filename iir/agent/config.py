"""Agent configuration: defaults < YAML file (``--config``) < environment < command-line flags.

Environment variables: ``ROUTER_URL`` (register with this router), ``IIR_AGENT_TOKEN`` (the
registration token), ``IIR_HEARTBEAT_INTERVAL`` (seconds between heartbeats, default 10),
``IIR_AGENT_URL`` (the URL the router should use to reach this agent).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from iir.spec.diagnose import did_you_mean

__all__ = ["DEFAULT_MODEL", "AgentConfig", "VllmSettings", "load_agent_config"]

DEFAULT_MODEL = "local_mistral-7b-instruct-q4"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class VllmSettings(_Model):
    """How the ``vllm`` engine reaches a vLLM OpenAI server."""

    url: str | None = Field(None, description="Base URL of a running vLLM OpenAI server; unset: the agent starts one.")
    python: str = Field(sys.executable, description="Python interpreter with vLLM installed, used to start the server.")
    port: int | None = Field(None, ge=1, le=65535, description="Port of the started server (default: a free port).")
    args: list[str] = Field([], description="Extra arguments for `vllm.entrypoints.openai.api_server`.")
    env: dict[str, str] = Field({}, description="Extra environment variables for the started server.")
    startup_timeout: float = Field(600.0, gt=0, description="Seconds to wait for the started server to answer.")
    api_key: SecretStr | None = Field(None, description="Bearer token the vLLM server expects, if any.")


class AgentConfig(_Model):
    """One agent: one model, one engine, one HTTP listener."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(5000, ge=0, le=65535, description="Port to listen on (0: any free port).")
    model: str = Field(DEFAULT_MODEL, description="Model name to serve (a key of `models`), a local folder or a hub id.")
    models: dict[str, str] = Field(
        {DEFAULT_MODEL: "~/models/Mistral-7B-Instruct-v0.3"},
        description="Model name → local folder (saved with save_pretrained) or Hugging Face hub id.")
    engine: Literal["transformers", "vllm"] = Field("transformers", description="Inference engine.")
    device: str = Field("auto", description="`auto` (MPS on macOS, then CUDA, then CPU), `cpu`, `cuda`, `cuda:1`, `mps`.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="Weights dtype.")
    context_window: int | None = Field(None, ge=16, description="Override the model's context window (tokens).")
    max_queue: int = Field(8, ge=1, description="Most requests admitted at once (running + waiting); more get 503.")
    max_body: int = Field(1024 * 1024, ge=1024, description="Largest accepted request body, in bytes.")
    default_max_tokens: int = Field(256, ge=1, description="Completion budget when a request gives no max_tokens.")
    router_url: str | None = Field(None, description="Router to register with (ROUTER_URL); unset: no registration.")
    token: SecretStr | None = Field(None, description="Registration token (IIR_AGENT_TOKEN).")
    advertise_url: str | None = Field(None, description="URL the router uses to reach this agent (IIR_AGENT_URL).")
    name: str | None = Field(None, description="Display name in `iir agents list` (default: host:port).")
    heartbeat_interval: float = Field(10.0, gt=0, description="Seconds between heartbeats (IIR_HEARTBEAT_INTERVAL).")
    capabilities: list[Literal["tools", "images", "json"]] = Field(
        [], description="Capabilities reported at registration. The router gives agents none (tools, images and "
        "JSON-mode requests skip them): the agent protocol carries plain text only.")
    vllm: VllmSettings = Field(default_factory=VllmSettings, description="Settings of the `vllm` engine.")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"unknown device {value!r}: use auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("router_url", "advertise_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+)(:\d+)?(/\S*)?$", value):
            raise ValueError(f"must be an http:// or https:// URL such as http://router:8000, got {value!r}")
        return value

    def model_source(self) -> str:
        """The folder or hub id the served model is loaded from."""
        return self.models.get(self.model, self.model)

    def served_name(self) -> str:
        if self.model in self.models:
            return self.model
        path = Path(self.model).expanduser()
        return path.name if path.exists() else self.model

    def public_url(self, bound_port: int | None = None) -> str:
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{bound_port or self.port}"


def load_agent_config(path: str | Path | None, env: Mapping[str, str],
                      overrides: Mapping[str, Any] | None = None) -> AgentConfig:
    """Build the configuration; raises ``ValueError`` with a readable message when invalid."""
    data: dict[str, Any] = {}
    if path is not None:
        from ruamel.yaml import YAML, YAMLError

        try:
            loaded = YAML(typ="safe").load(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ValueError(f"cannot read agent config {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: the agent config is not UTF-8 text") from None
        except YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"{where} YAML syntax error: {problem}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: the agent config must be a mapping")
        data.update(loaded or {})
    for key, var in (("router_url", "ROUTER_URL"), ("token", "IIR_AGENT_TOKEN"),
                     ("heartbeat_interval", "IIR_HEARTBEAT_INTERVAL"), ("advertise_url", "IIR_AGENT_URL")):
        if env.get(var):
            data[key] = env[var]
    if overrides:
        models = overrides.get("models")
        if models:
            data["models"] = {**data.get("models", {}), **models}
        data.update({k: v for k, v in overrides.items() if v is not None and k != "models"})
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as e:
        where = f"{path}: " if path else ""
        lines = [f"{where}{'.'.join(map(str, err['loc']))}: {_message(err)}" for err in e.errors()]
        raise ValueError("invalid agent configuration:\n  " + "\n  ".join(lines)) from None


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        fields = VllmSettings.model_fields if err["loc"][:1] == ("vllm",) else AgentConfig.model_fields
        name = str(err["loc"][-1])
        return f"unknown setting{did_you_mean(name, fields) or '; allowed: ' + ', '.join(fields)}"
    return str(err["msg"]).removeprefix("Value error, ")
