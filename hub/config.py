"""The registry (`models.toml`): parsed once into pydantic models; every default lives here and nowhere else.

A leaf: it imports nothing of the hub but its errors and the route table (hub/endpoints.py: the kinds of model and
the tasks they serve, pure data). Pydantic checks shapes and types (`extra="forbid"`: an unknown
key is an error) and `Registry.problems()` checks what needs the whole file (hosts that exist, models that fit their
budget). What each engine accepts is that engine's business: `hub/registry.py` loads a file, then asks every
engine for its own checks. Every check reports "key.path: message (valid: ...)" lines, collected into one
ConfigError.

Engine-specific keys live in each engine's `args` table. The keys that earlier registries set at the top of a
model's table (`command`, `health` for the command engine, `base_url`, `api_key_env` for the openai engine) are
moved into `args` when a file is read, with a warning, so those files keep working.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from hub.endpoints import KINDS, TASKS

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
# what clients (the CLI, benchmarks, scripts) read to find the hub and its key when no registry says otherwise
CLIENT_URL_ENV = "HUB_URL"
CLIENT_KEY_ENV = "HUB_API_KEY"
# keys that moved from a model's table into its engine's `args` (read where they used to be, with a warning)
MOVED_TO_ARGS = ("command", "health", "base_url", "api_key_env")
log = logging.getLogger("hub.config")


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
RuntimeName = Literal["process", "docker", "ray"]
RAY_HOST = "ray"  # the host of every ray model: the Ray cluster places it (hub/runtimes/ray.py)
ModelType = Literal[KINDS]  # type: ignore[valid-type]
Task = Literal[TASKS]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class HubSettings(_Strict):
    """The `[hub]` table."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    memory_budget_gb: float | None = Field(None, gt=0)
    sleep_budget_gb: float | None = Field(None, ge=0, description="RAM the local host's sleeping models may hold "
                                                                   "together (unset: no limit)")
    idle_ttl: Duration = 0.0
    start_timeout: Duration = 600.0
    drain_timeout: Duration = 30.0
    stop_timeout: Duration = 15.0
    runtime: RuntimeName = "process"
    # the ray runtime (hub/runtimes/ray.py): one cluster per hub
    ray_address: str | None = Field(None, description="the Ray cluster: \"host:6379\" or \"ray://host:10001\"; "
                                                      "unset: $RAY_ADDRESS, else the cluster started on this machine")
    ray_namespace: str = Field("hub", min_length=1, description="the Ray namespace of the hub's actors")
    ray_place_timeout: Duration = Field(60.0, description="how long a start waits for a node with the model's "
                                                          "resources before it fails with 503")
    api_key_env: str | None = None
    state_dir: str = ".hub"
    keep_running: bool = False
    # limits on what a client may send (answered 413, 431 or 400 before an engine is asked)
    max_body_mb: float = Field(32, gt=0)
    max_upload_mb: float = Field(64, gt=0)
    max_json_depth: int = Field(64, ge=2, le=512)
    max_header_kb: float = Field(64, gt=0)
    max_headers: int = Field(100, ge=8)
    # scheduling (hub/manager/queue.py): every model's, unless the model sets its own
    max_concurrency: int = Field(0, ge=0, description="requests forwarded to one engine at once (0: no limit)")
    max_queue: int = Field(512, ge=1, description="requests waiting for one model; more get 429")
    max_wait: Duration = Field(900.0, description="longest wait of a request for its model, start included")
    max_run: Duration = Field(60.0, description="how long a model keeps taking new requests once another model's "
                                                "request waits for its memory")
    min_residency: Duration = Field(30.0, description="how long a model that became ready keeps taking its new "
                                                      "requests before it yields (unless it is idle)")
    # towards the engines (hub/gateway.py): a model's own keys win; 0 means no limit
    connect_timeout: Duration = Field(10.0, gt=0, description="longest wait for a connection to an engine")
    max_engine_connections: int = Field(256, ge=0, description="requests under way to one engine at once, each on "
                                                               "its own connection (0: no cap); more wait")
    answer_timeout: Duration = Field(1800.0, ge=0, description="longest wait for an engine's answer to begin (its "
                                                              "status and headers) once the request is sent")
    stream_idle_timeout: Duration = Field(300.0, ge=0, description="longest silence of an engine in the middle of "
                                                                   "an answer or a stream")
    # batches (hub/batches/): OpenAI's limits by default
    max_batch_lines: int = Field(50000, ge=1, description="lines in one batch's input file; more get a 400")
    max_batch_file_mb: float = Field(200, gt=0, description="size of a file uploaded to /v1/files; larger get a 400")
    batch_concurrency: int = Field(16, ge=1, description="lines of batches sent to one model at once where the model "
                                                         "has no max_concurrency")
    batch_idle_window: Duration = Field(0.0, description="a start that only batch lines wait for evicts no model that "
                                                         "served a request within this long: it waits (0: off)")
    fit_max_tokens: bool = Field(True, description="clamp an output limit (max_tokens ...) to what the model's "
                                                   "context leaves after the prompt (hub/fit.py); false: the "
                                                   "engine's 400")


class HostConfig(_Strict):
    """A `[hosts.<name>]` table: a Docker host with its own memory budget. `[hosts.local]` (optional) sets the
    docker options of the local host; its budget stays `[hub] memory_budget_gb`."""

    docker: str | None = Field(None, description="unix:///var/run/docker.sock, tcp://host:2375 or ssh://user@host; "
                                                 "unset: $DOCKER_HOST, else the local socket (local host only)")
    address: str = "127.0.0.1"
    memory_budget_gb: float | None = Field(None, gt=0)
    sleep_budget_gb: float | None = Field(None, ge=0, description="RAM its sleeping models may hold (unset: no limit)")
    network: Literal["publish", "host"] = "publish"
    publish_address: str = "127.0.0.1"
    hf_cache: str = "~/.cache/huggingface"


LORA_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
LOCAL_SOURCE = (".", "/", "~", "{state_dir}")  # a LoRA source that starts so is a local path, else a hub repo id


class LoraConfig(_Strict):
    """One adapter of `[models.<id>.loras]`: `name = "path or hub repo"`, or a table with these keys. Requested as
    model `<id>:<name>` (every endpoint), or by an image request's `lora` field."""

    source: str = Field(description="a local folder or .safetensors file (relative to the registry file; "
                                    "\"{state_dir}\" allowed), or a hub repo id")
    weight_name: str | None = Field(None, description="the file to load where the folder or repo holds several")
    scale: float = Field(1.0, ge=-10, le=10, description="the adapter's strength when a request gives none "
                                                         "(image models: `lora_scale` overrides it)")
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        return {"source": data} if isinstance(data, str) else data

    @property
    def is_repo(self) -> bool:
        """Whether the source is a hub repo id (the engine downloads it at its start) rather than a local path."""
        return not self.source.startswith(LOCAL_SOURCE)


class ModelConfig(_Strict):
    """A `[models.<id>]` table."""

    type: ModelType
    engine: str
    source: str | None = None
    revision: str | None = Field(None, description="a branch, tag or commit of a hub repo source, pinned (pulls and "
                                                  "the engine read it)")
    allow_patterns: list[str] | None = Field(None, description="files of a hub repo source to download (glob "
                                                               "patterns), instead of the engine's choice")
    ignore_patterns: list[str] | None = Field(None, description="files of a hub repo source to skip (glob patterns), "
                                                                "instead of the engine's choice")
    memory_gb: float | None = Field(None, ge=0)
    runtime: RuntimeName | None = None
    host: str | list[str] = Field("local", description="a host, or several: a cold start picks one (placement)")
    ttl: Duration | None = None
    pinned: bool = False
    sleep: bool = Field(False, description="put to sleep instead of stopped on eviction or ttl (engines that can)")
    sleep_memory_gb: float | None = Field(None, ge=0, description="RAM it holds asleep (unset: the engine's estimate)")
    max_concurrency: int | None = Field(None, ge=0)
    max_queue: int | None = Field(None, ge=1)
    max_wait: Duration | None = None
    max_run: Duration | None = None
    min_residency: Duration | None = None
    answer_timeout: Duration | None = Field(None, ge=0)
    stream_idle_timeout: Duration | None = Field(None, ge=0)
    fit_max_tokens: bool | None = None
    args: dict[str, Any] = Field(default_factory=dict, description="the engine's own keys (see each engine)")
    env: dict[str, str] = Field(default_factory=dict)
    description: str | None = Field(None, description="a note for people: shown by the web app and /v1/models")
    tasks: list[Task] | None = Field(None, description="what the model serves, where its kind's tasks do not fit")
    loras: dict[Annotated[str, Field(pattern=LORA_NAME)], LoraConfig] = Field(
        default_factory=dict, description="LoRA adapters served on top of this model, each as model id <id>:<name>")
    # ray runtime: Ray resources the engine's actor asks for besides its gpus and memory_gb ("CPU": cores)
    resources: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    # docker runtime
    image: str | None = None
    gpus: Literal["all"] | list[int] | None = None

    @field_validator("host")
    @classmethod
    def _some_hosts(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("name at least one host (or leave host out: \"local\")")
            if len(set(value)) != len(value):
                raise ValueError(f"a host is named twice in {value}")
        return value

    @property
    def hosts(self) -> list[str]:
        """The hosts the model may run on, in the registry's order."""
        return [self.host] if isinstance(self.host, str) else list(self.host)

    @model_validator(mode="before")
    @classmethod
    def _move_engine_keys(cls, data: Any) -> Any:
        """Read engine keys from where earlier registries put them (the model's table) into `args`."""
        if not isinstance(data, dict) or not any(k in data for k in MOVED_TO_ARGS):
            return data
        args = data.get("args", {})
        if not isinstance(args, dict):
            return data  # pydantic reports the args table itself
        data, args = dict(data), dict(args)
        for key in MOVED_TO_ARGS:
            if key in data:
                if key in args:
                    raise ValueError(f"{key} is set twice, in the model's table and in its args: keep args.{key}")
                args[key] = data.pop(key)
                log.warning("registry: %s belongs in the model's args table now (read as args.%s)", key, key)
        data["args"] = args
        return data


@dataclass(frozen=True)
class Limits:
    """A model's scheduling and timeout keys, its own or else [hub]'s (Registry.limits_of)."""

    max_concurrency: int  # 0: no limit
    max_queue: int
    max_wait: float
    max_run: float
    min_residency: float
    answer_timeout: float = 0.0  # 0: no limit
    stream_idle_timeout: float = 0.0  # 0: no limit
    fit_max_tokens: bool = True

    @classmethod
    def of(cls, hub: HubSettings, model: ModelConfig | None = None) -> Limits:
        """Each of the model's own keys, else the [hub] one."""
        own = {k: v for k in cls.__dataclass_fields__ if model and (v := getattr(model, k)) is not None}
        return cls(**{k: own.get(k, getattr(hub, k)) for k in cls.__dataclass_fields__})


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

    @property
    def url(self) -> str:
        """Where the hub's own API is reached from this machine (a wildcard bind address means loopback)."""
        host = self.hub.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.hub.port}"

    def api_key(self) -> str | None:
        """The key the hub requires: the value of the variable `[hub] api_key_env` names (None: no key)."""
        env = self.hub.api_key_env
        return (os.environ.get(env) or None) if env else None

    def resolve_path(self, value: str) -> Path:
        """A path from the registry, relative ones taken from the registry file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @model_validator(mode="after")
    def _ray_models_on_the_cluster(self) -> Registry:
        """A ray model's host is the Ray cluster (RAY_HOST), which places it: Ray's accounting, not a host budget."""
        for m in self.models.values():
            if (m.runtime or self.hub.runtime) == "ray" and "host" not in m.model_fields_set:
                m.host = RAY_HOST
        return self

    def split_adapter(self, model_id: str) -> tuple[str, str | None]:
        """(model, LoRA adapter) of a requested id: a registered id is itself; `<id>:<name>` names adapter `name` of
        model `<id>` when the model has it. Anything else comes back as is, with no adapter (the caller's 404)."""
        if model_id in self.models or ":" not in model_id:
            return model_id, None
        base, _, name = model_id.rpartition(":")
        m = self.models.get(base)
        return (base, name) if m is not None and name in m.loras else (model_id, None)

    def no_adapter(self, model_id: str, running: ModelConfig | None = None) -> str | None:
        """Why `<id>:<name>` names no adapter when `<id>` is a registered model (None otherwise). `running`: the
        config the model's engine runs, which keeps its adapters until it restarts: one a reload added is not there."""
        base, _, name = model_id.rpartition(":")
        if base not in self.models:
            return None
        if name in self.models[base].loras:
            if running is None or name in running.loras:
                return None
            return (f"model {base!r} serves LoRA adapter {name!r} from its engine's next start: the registry reload "
                    "that added it restarts the engine once it is idle (or at once: POST /hub/reload "
                    "{\"restart\": true})")
        have = ", ".join(f"{base}:{n}" for n in self.models[base].loras) or \
            f"none: add them under [models.{base}.loras] in the registry"
        return f"model {base!r} has no LoRA adapter {name!r} (its adapters: {have})"

    def runtime_of(self, model_id: str) -> str:
        """The runtime a model runs under."""
        return self.models[model_id].runtime or self.hub.runtime

    def ttl_of(self, model_id: str) -> float:
        """Seconds of idleness after which a model is stopped (0: never)."""
        ttl = self.models[model_id].ttl
        return self.hub.idle_ttl if ttl is None else ttl

    def limits_of(self, model_id: str) -> Limits:
        """A model's scheduling limits: each of its own keys, else [hub]'s."""
        return Limits.of(self.hub, self.models[model_id])

    def budget_of(self, host: str) -> float | None:
        """The memory budget in GB of a host (None: unlimited)."""
        if host == RAY_HOST:
            return None  # Ray accounts for what its nodes hold
        if host != "local" and host in self.hosts:
            return self.hosts[host].memory_budget_gb
        return self.hub.memory_budget_gb

    def sleep_budget_of(self, host: str) -> float | None:
        """The RAM in GB that a host's sleeping models may hold together (None: no limit)."""
        if host != "local" and host in self.hosts:
            return self.hosts[host].sleep_budget_gb
        return self.hub.sleep_budget_gb

    def host_config(self, host: str) -> HostConfig:
        """The docker settings of a host (the local host's come from `[hosts.local]` when there is one)."""
        if host in self.hosts:
            return self.hosts[host]
        if host == "local":
            return HostConfig()
        raise KeyError(host)

    def problems(self) -> list[str]:
        """What pydantic cannot see alone: hosts that exist, models that fit their host's budget."""
        out: list[str] = []
        for name, h in self.hosts.items():
            if name != "local" and not h.docker:
                out.append(f"hosts.{name}.docker: required key is missing (unix:///path, tcp://host:2375 or "
                           "ssh://user@host)")
            if name == "local" and h.memory_budget_gb is not None:
                out.append("hosts.local.memory_budget_gb: the local host's budget is [hub] memory_budget_gb")
            if name == "local" and h.sleep_budget_gb is not None:
                out.append("hosts.local.sleep_budget_gb: the local host's sleep budget is [hub] sleep_budget_gb")
        for mid, m in self.models.items():
            at = f"models.{mid}"
            for name in m.loras:
                if f"{mid}:{name}" in self.models:
                    out.append(f"{at}.loras.{name}: its id {mid}:{name} is also a model's id: rename one of them")
            for host in m.hosts:
                if host == RAY_HOST or (self.runtime_of(mid) == "ray"):
                    continue  # hub/runtimes/rayplace.py checks ray models
                if host != "local" and host not in self.hosts:
                    valid = ", ".join(["local", *self.hosts])
                    out.append(f"{at}.host: unknown host {host!r} (valid: {valid})")
                    continue
                budget = self.budget_of(host)
                if budget is not None and m.memory_gb is not None and m.memory_gb > budget:
                    out.append(
                        f"{at}.memory_gb: {m.memory_gb:g} GB is more than the budget of host {host!r} "
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


def client_url(registry: Registry | None = None) -> str:
    """The hub a client talks to, without /v1: $HUB_URL, else the registry's own URL, else the default address."""
    if url := os.environ.get(CLIENT_URL_ENV):
        return url.rstrip("/").removesuffix("/v1")
    return (registry or Registry()).url


def client_api_key(registry: Registry | None = None) -> str | None:
    """The key a client sends: $HUB_API_KEY, else the key the registry's hub requires."""
    return os.environ.get(CLIENT_KEY_ENV) or (registry.api_key() if registry else None)
