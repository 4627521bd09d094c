"""The surface every engine has: how to launch it, how to know it is ready, how to reach it.

An engine is a stateless object. The manager asks it for a LaunchSpec (what to run, for whichever runtime), hands
the spec to a runtime (process or docker), then polls `ready()` until the engine answers. Engines that are not
managed (`managed = False`, the `openai` engine) are never launched: `upstream()` says where they already run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from hub.errors import RuntimeFailure

if TYPE_CHECKING:
    from hub.config import ModelConfig, Registry


class NoArgs(BaseModel):
    """An engine that takes no `args` table."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class LaunchSpec:
    """What a runtime needs to run an engine. `argv` is the whole command for the process runtime and the
    container's command (arguments to the image's entrypoint) for the docker runtime."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    health_path: str = "/health"
    served_name: str | None = None  # when set, ready also needs GET /v1/models to list it
    # docker runtime only
    image: str | None = None
    gpus: Literal["all"] | list[int] | None = None
    ipc_host: bool = False
    volumes: dict[str, str] = field(default_factory=dict)  # host path -> container path


@dataclass
class LaunchContext:
    """What an engine gets to build its LaunchSpec."""

    model_id: str
    model: ModelConfig
    registry: Registry
    runtime: str  # "process" or "docker"
    port: int  # the port the engine must listen on
    gpu_total_gb: float | None = None  # memory of one GPU where the engine runs, when the runtime knows it

    def engine_python(self, env_name: str) -> str:
        """The Python of an engine environment made by `hub engines setup`, or a RuntimeFailure saying how."""
        py = self.registry.envs_dir / env_name / "bin" / "python"
        if not py.exists():
            raise RuntimeFailure(
                f"the {env_name} engine environment is missing ({py}): run `hub engines setup {env_name}`"
            )
        return str(py)

    def source(self) -> str:
        """The model's source: a local folder (resolved against the registry's folder; `{state_dir}` expands to
        the hub's state dir) or a hub repo id."""
        src = (self.model.source or "").replace("{state_dir}", str(self.registry.state_dir))
        if src.startswith((".", "/", "~")):
            return str(self.registry.resolve_path(src))
        return src


@dataclass
class Upstream:
    """Where an engine that the hub does not manage already runs."""

    base_url: str
    api_key: str | None = None
    model: str | None = None  # the model name the server knows, when it differs from the registry id


class Engine:
    """Base class of all engines; subclasses override what differs."""

    name: ClassVar[str] = ""
    managed: ClassVar[bool] = True
    Args: ClassVar[type[BaseModel]] = NoArgs
    needs_source: ClassVar[bool] = False

    def problems(self, model: ModelConfig) -> list[str]:
        """Problems with this model's engine keys, as "key: message" relative to the model's table."""
        out = []
        if self.needs_source and not model.source:
            out.append(f"source: engine {self.name!r} needs a source (a local folder or a hub repo id)")
        try:
            self.Args.model_validate(model.args)
        except ValidationError as err:
            from hub.config import format_validation_error

            out.extend(f"args.{line}" for line in format_validation_error(err, list(self.Args.model_fields)))
        return out

    def args(self, model: ModelConfig) -> Any:
        """The validated `args` table."""
        return self.Args.model_validate(model.args)

    def launch(self, ctx: LaunchContext) -> LaunchSpec:
        """The LaunchSpec that runs this model on `ctx.runtime`, listening on `ctx.port`."""
        raise NotImplementedError

    def upstream(self, model: ModelConfig) -> Upstream:
        """For unmanaged engines: where the model already runs."""
        raise NotImplementedError

    async def ready(self, client: httpx.AsyncClient, base_url: str, spec: LaunchSpec) -> bool:
        """Whether the engine serves: its health path answers 200 and, if named, /v1/models lists the model."""
        try:
            r = await client.get(base_url + spec.health_path, timeout=5.0)
            if r.status_code != 200:
                return False
            if spec.served_name:
                r = await client.get(base_url + "/v1/models", timeout=5.0)
                return r.status_code == 200 and any(m.get("id") == spec.served_name for m in r.json().get("data", []))
            return True
        except (httpx.HTTPError, ValueError):
            return False
