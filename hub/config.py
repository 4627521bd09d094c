"""The registry (`models.toml`): parsed once into pydantic models; every default lives here and nowhere else.

Validation runs in two passes. Pydantic checks shapes and types (`extra="forbid"`: an unknown key is an error);
then `Registry.problems()` checks what needs the whole file: the engine names registered through the
`hub.engines` entry points, each engine's own keys and `args`, hosts that exist, models that fit their budget.
Both passes report "key.path: message (valid: ...)" lines, collected into one ConfigError.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from hub.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string such as "90s", "15m", "1h", "500ms"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90, \"90s\", \"15m\" or \"1h\"")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    raise ValueError(f"{value!r} is not a duration (use seconds or a string such as \"90s\", \"15m\", \"1h\")")


Duration = Annotated[float, BeforeValidator(parse_duration)]
RuntimeName = Literal["process", "docker"]
ModelType = Literal["text", "image"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class HubSettings(_Strict):
    """The `[hub]` table."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    memory_budget_gb: float | None = Field(None, gt=0)
    idle_ttl: Duration = 0.0
    start_timeout: Duration = 600.0
    drain_timeout: Duration = 30.0
    stop_timeout: Duration = 15.0
    runtime: RuntimeName = "process"
    api_key_env: str | None = None
    state_dir: str = ".hub"
    keep_running: bool = False


class HostConfig(_Strict):
    """A `[hosts.<name>]` table: a Docker host with its own memory budget. `[hosts.local]` (optional) sets the
    docker options of the local host; its budget stays `[hub] memory_budget_gb`."""

    docker: str | None = Field(None, description="unix:///var/run/docker.sock, tcp://host:2375 or ssh://user@host; "
                                                 "unset: $DOCKER_HOST, else the local socket (local host only)")
    address: str = "127.0.0.1"
    memory_budget_gb: float | None = Field(None, gt=0)
    network: Literal["publish", "host"] = "publish"
    publish_address: str = "127.0.0.1"
    hf_cache: str = "~/.cache/huggingface"


class ModelConfig(_Strict):
    """A `[models.<id>]` table."""

    type: ModelType
    engine: str
    source: str | None = None
    memory_gb: float | None = Field(None, ge=0)
    runtime: RuntimeName | None = None
    host: str = "local"
    ttl: Duration | None = None
    pinned: bool = False
    args: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    # command engine
    command: list[str] | None = None
    health: str = "/health"
    # openai engine
    base_url: str | None = None
    api_key_env: str | None = None
    # docker runtime
    image: str | None = None
    gpus: Literal["all"] | list[int] | None = None


class Registry(_Strict):
    """A whole registry file."""

    hub: HubSettings = Field(default_factory=HubSettings)
    hosts: dict[str, HostConfig] = Field(default_factory=dict)
    models: dict[Annotated[str, Field(pattern=MODEL_ID)], ModelConfig] = Field(default_factory=dict)
    path: Path | None = Field(None, exclude=True)

    # ---- derived values (one place for every fallback) ----

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the registry are resolved against: the registry file's folder."""
        return self.path.parent if self.path else Path.cwd()

    @property
    def state_dir(self) -> Path:
        """Logs, engine environments, demo models and the memory ledger (HUB_STATE_DIR overrides the registry)."""
        return self.resolve_path(os.environ.get("HUB_STATE_DIR") or self.hub.state_dir)

    @property
    def envs_dir(self) -> Path:
        """Where `hub engines setup` makes the engines' virtual environments (HUB_ENVS_DIR overrides)."""
        env = os.environ.get("HUB_ENVS_DIR")
        return self.resolve_path(env) if env else self.state_dir / "envs"

    def resolve_path(self, value: str) -> Path:
        """A path from the registry, relative ones taken from the registry file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def runtime_of(self, model_id: str) -> str:
        """The runtime a model runs under."""
        return self.models[model_id].runtime or self.hub.runtime

    def ttl_of(self, model_id: str) -> float:
        """Seconds of idleness after which a model is stopped (0: never)."""
        ttl = self.models[model_id].ttl
        return self.hub.idle_ttl if ttl is None else ttl

    def budget_of(self, host: str) -> float | None:
        """The memory budget in GB of a host (None: unlimited)."""
        if host != "local" and host in self.hosts:
            return self.hosts[host].memory_budget_gb
        return self.hub.memory_budget_gb

    def host_config(self, host: str) -> HostConfig:
        """The docker settings of a host (the local host's come from `[hosts.local]` when there is one)."""
        if host in self.hosts:
            return self.hosts[host]
        if host == "local":
            return HostConfig()
        raise KeyError(host)

    def problems(self) -> list[str]:
        """What pydantic cannot see alone: engines, their keys and args, hosts, budgets."""
        from engines import available_engines, get_engine  # engines depend on config, not the other way round

        out: list[str] = []
        for name, h in self.hosts.items():
            if name != "local" and not h.docker:
                out.append(f"hosts.{name}.docker: required key is missing (unix:///path, tcp://host:2375 or "
                           "ssh://user@host)")
            if name == "local" and h.memory_budget_gb is not None:
                out.append("hosts.local.memory_budget_gb: the local host's budget is [hub] memory_budget_gb")
        names = available_engines()
        for mid, m in self.models.items():
            at = f"models.{mid}"
            if m.engine not in names:
                out.append(f"{at}.engine: unknown engine {m.engine!r} (valid: {', '.join(names)})")
                continue
            out.extend(f"{at}.{p}" for p in get_engine(m.engine).problems(m))
            if m.host != "local" and m.host not in self.hosts:
                valid = ", ".join(["local", *self.hosts])
                out.append(f"{at}.host: unknown host {m.host!r} (valid: {valid})")
            budget = self.budget_of(m.host)
            if budget is not None and m.memory_gb is not None and m.memory_gb > budget:
                out.append(
                    f"{at}.memory_gb: {m.memory_gb:g} GB is more than the budget of host {m.host!r} "
                    f"({budget:g} GB): raise memory_budget_gb or lower memory_gb"
                )
        return out


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the table at `loc`, for "unknown key" messages."""
    cls: type[BaseModel] | None = None
    if len(loc) == 1:
        cls = Registry
    elif loc[0] == "hub" and len(loc) == 2:
        cls = HubSettings
    elif loc[0] == "hosts" and len(loc) == 3:
        cls = HostConfig
    elif loc[0] == "models" and len(loc) == 3:
        cls = ModelConfig
    return [f for f in cls.model_fields if f != "path"] if cls else []


def format_validation_error(err: ValidationError, valid_keys: list[str] | None = None) -> list[str]:
    """One "key.path: message" line per pydantic error, naming valid values where there is a fixed set.
    `valid_keys`: the keys of the validated table, when it is not the registry itself (an engine's args)."""
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"] if p != "[key]")
        path = ".".join(loc) or "(top level)"
        kind = e["type"]
        if kind == "extra_forbidden":
            valid = ", ".join(valid_keys if valid_keys is not None else _fields_at(loc))
            lines.append(f"{path}: unknown key (valid: {valid})")
        elif kind == "literal_error":
            noun = loc[-1] if loc else "value"
            lines.append(f"{path}: unknown {noun} {e['input']!r} (valid: {e['ctx']['expected'].replace(' or ', ', ')})")
        elif kind == "missing":
            lines.append(f"{path}: required key is missing")
        elif kind == "string_pattern_mismatch" and loc[:1] == ("models",):
            lines.append(f"{path}: invalid model id (letters, digits and . _ : - only)")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {msg}")
    return lines


def parse_registry(data: dict[str, Any], path: Path | None = None) -> Registry:
    """A validated Registry from parsed TOML data, or a ConfigError listing every problem."""
    source = str(path) if path else "registry"
    try:
        reg = Registry.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err), source) from None
    reg.path = path.resolve() if path else None
    if problems := reg.problems():
        raise ConfigError(problems, source)
    return reg


def load_registry(path: str | Path) -> Registry:
    """Read and validate a registry file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError([f"cannot read the registry: {err.strerror}"], str(p)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"invalid TOML: {err}"], str(p)) from None
    return parse_registry(data, p)
