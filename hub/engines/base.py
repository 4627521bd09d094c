"""The surface every engine has: how to launch it, how to know it is ready, how to reach it.

An engine is a stateless object. The manager asks it for a LaunchSpec (what to run, in runtime-neutral terms), hands
the spec to a runtime (process or docker), then polls `ready()` until the engine answers. An engine's own registry
keys live in its `Args` model (the model's `args` table), for built-in engines and plugins alike. Engines that are not
managed (`managed = False`, the `openai` engine) are never launched: `upstream()` says where they already run.

Downloads: an engine whose source may be a hub repo says which of the repo's files it reads
(`download_patterns`: allow and ignore patterns, from the repo's file list); the hub pulls those into the cache the
engine reads (hub/downloads/) before it starts the engine, and passes the registry's `revision` to it.

Sleep (optional): an engine that can free its GPU memory while keeping its process says so in `sleep_refusal`
(None: this model can sleep), and implements `sleep`, `wake` and `sleep_memory_gb` (the RAM it holds asleep).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from hub.config import format_validation_error

Patterns = tuple[list[str] | None, list[str] | None]  # (allow_patterns, ignore_patterns); None: no filter
SLEEP_PROCESS_GB = 1.0  # RAM an engine process keeps while asleep (interpreter, imports, runtime context)

if TYPE_CHECKING:
    from hub.config import ModelConfig, Registry


class NoArgs(BaseModel):
    """An engine that takes no `args` table."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class LaunchSpec:
    """What to run, in terms every runtime understands; an engine never names a runtime.

    The server is either a Python module run from one of the engine environments that `hub engines setup` makes
    (`env_name` and `module`), or a whole `command` line. `image` is the container image whose entrypoint is that
    server. The runtime turns the spec into a process or a container: it chooses the listen address (passed with
    `bind_flag`), mounts `model_path` where a container needs it, and gives the engine the GPUs it asks for.
    """

    args: list[str] = field(default_factory=list)  # the server's own arguments
    env_name: str | None = None  # an engine environment under <envs_dir> ("vllm", "diffusers")
    module: str | None = None  # run as `python -m module` from that environment
    command: list[str] | None = None  # or a whole command line, run as it is (args follow it)
    image: str | None = None  # the container image; its entrypoint is the server (command, if set, replaces it)
    environ: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None  # the working folder of a local process
    bind_flag: str | None = "--host"  # the flag that sets the listen address (None: the server has none)
    model_path: str | None = None  # a local folder the engine reads its model from
    extra_paths: list[str] = field(default_factory=list)  # other local folders it reads (LoRA adapters), mounted alike
    health_path: str = "/health"
    served_name: str | None = None  # when set, ready also needs GET /v1/models to list it
    gpus: Literal["all"] | list[int] | None = None  # GPUs the engine uses (None: none)
    shared_memory: bool = False  # it needs the host's shared memory (vLLM's workers: ipc=host)


@dataclass
class LaunchContext:
    """What an engine gets to build its LaunchSpec."""

    model_id: str
    model: ModelConfig
    registry: Registry
    port: int  # the port the engine must listen on
    gpu_memory_gb: dict[int, float] = field(default_factory=dict)  # GPUs of the engine's host, by index (runtime)

    def gpu_total_gb(self, count: int = 1) -> float | None:
        """Memory of the smallest GPU the engine will use (the model's `gpus`, else the first `count`), or None
        where the runtime does not know its host's GPUs."""
        gpus = self.gpu_memory_gb
        if isinstance(self.model.gpus, list):
            used = [gpus[i] for i in self.model.gpus if i in gpus]
        else:
            used = [gpus[i] for i in sorted(gpus)[:count]]
        return min(used) if used else None

    def source(self) -> str:
        """The model's source: a local folder (resolved against the registry's folder; `{state_dir}` expands to
        the hub's state dir) or a hub repo id."""
        return self.resolve(self.model.source or "")

    def resolve(self, source: str) -> str:
        """A source as `source()` reads the model's (a LoRA adapter's too): a local path made absolute, else as is
        (a hub repo id)."""
        src = source.replace("{state_dir}", str(self.registry.state_dir))
        if src.startswith((".", "/", "~")):
            return str(self.registry.resolve_path(src))
        return src

    def local_source(self) -> str | None:
        """The source when it is a local folder (an engine passes it as its LaunchSpec's model_path)."""
        src = self.source()
        return src if Path(src).is_absolute() else None

    def revision(self) -> str | None:
        """The registry's revision of a hub repo source (None for a local folder: it has none)."""
        return self.model.revision if self.model.revision and not self.local_source() else None


@dataclass
class Upstream:
    """Where an engine that the hub does not manage already runs."""

    base_url: str
    api_key: str | None = None
    model: str | None = None  # the model name the server knows, when it differs from the registry id


# files that duplicate a checkpoint's safetensors in other formats (PyTorch pickles, Flax, TensorFlow, ONNX)
DUPLICATE_WEIGHTS = ["*.bin", "*.pth", "*.pt", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "onnx/*",
                     "*.ot"]
ALWAYS_SKIPPED = ["*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "onnx/*", "*.ot"]  # formats no engine here reads


def weight_patterns(files: list[str]) -> list[str]:
    """The ignore patterns of an engine that reads safetensors: every duplicate format when the repo has
    safetensors, else only the formats it never reads."""
    return list(DUPLICATE_WEIGHTS if any(f.endswith(".safetensors") for f in files) else ALWAYS_SKIPPED)


class Engine:
    """Base class of all engines; subclasses override what differs."""

    name: ClassVar[str] = ""
    managed: ClassVar[bool] = True
    Args: ClassVar[type[BaseModel]] = NoArgs
    needs_source: ClassVar[bool] = False
    kinds: ClassVar[tuple[str, ...] | None] = None  # the model types it can serve (None: any)
    lora_kinds: ClassVar[tuple[str, ...]] = ()  # the model types whose LoRA adapters ([models.x.loras]) it serves

    def problems(self, model: ModelConfig) -> list[str]:
        """Problems with this model's engine keys, as "key: message" relative to the model's table."""
        out = []
        if self.kinds is not None and model.type not in self.kinds:
            out.append(f"type: engine {self.name!r} does not serve {model.type!r} models "
                       f"(valid: {', '.join(self.kinds)})")
        if model.loras and model.type not in self.lora_kinds:
            can = f"only for {', '.join(self.lora_kinds)} models" if self.lora_kinds else "none"
            out.append(f"loras: engine {self.name!r} serves no LoRA adapters for {model.type!r} models ({can})")
        if self.needs_source and not model.source:
            out.append(f"source: engine {self.name!r} needs a source (a local folder or a hub repo id)")
        try:
            self.Args.model_validate(model.args)
        except ValidationError as err:
            out.extend(f"args.{line}" for line in format_validation_error(err, list(self.Args.model_fields)))
            return out
        if model.sleep and (why := self.sleep_refusal(model)):
            out.append(f"sleep: {why}")
        return out

    def args(self, model: ModelConfig) -> Any:
        """The validated `args` table."""
        return self.Args.model_validate(model.args)

    def describe(self, model: ModelConfig) -> dict[str, Any]:
        """Extra fields of the model's /v1/models entry that clients build forms from (defaults and limits)."""
        return {}

    def refusal(self, model: ModelConfig, task: str, body: dict[str, Any]) -> str | None:
        """Why this model cannot take a request the route table would send it (None: it can). Called before the
        model is started, so that a request the engine would refuse does not cost a cold start."""
        return None

    def context_length(self, model: ModelConfig) -> int | None:
        """The model's context in tokens where the registry says it (None: unknown, or asked of the engine)."""
        return None

    def download_patterns(self, model: ModelConfig, files: list[str]) -> Patterns | None:
        """Which files of a hub repo source (`files`: every path of the repo at its revision) the engine reads, as
        (allow_patterns, ignore_patterns) for huggingface_hub (None: no filter); None: the engine downloads nothing
        (the registry's allow_patterns still make the hub pull them)."""
        return None

    def launch(self, ctx: LaunchContext) -> LaunchSpec:
        """The LaunchSpec that runs this model, listening on `ctx.port`."""
        raise NotImplementedError

    def upstream(self, model: ModelConfig) -> Upstream:
        """For unmanaged engines: where the model already runs."""
        raise NotImplementedError

    def sleep_refusal(self, model: ModelConfig) -> str | None:
        """Why this model cannot sleep, saying what to set (None: it can)."""
        return f"engine {self.name!r} cannot sleep: set sleep = false"

    def can_sleep(self, model: ModelConfig) -> bool:
        """Whether this model's engine can be put to sleep (keep its process, free its GPU memory)."""
        return self.managed and self.sleep_refusal(model) is None

    def sleep_memory_gb(self, model: ModelConfig) -> float:
        """The RAM in GB it holds asleep, unless the registry says (`sleep_memory_gb`)."""
        return SLEEP_PROCESS_GB

    async def sleep(self, client: httpx.AsyncClient, base_url: str, model: ModelConfig, timeout: float) -> None:
        """Free the engine's GPU memory, keeping its process; raises httpx.HTTPError (or RuntimeError) when it
        cannot."""
        raise NotImplementedError

    async def wake(self, client: httpx.AsyncClient, base_url: str, model: ModelConfig, timeout: float) -> None:
        """Make a sleeping engine serve again; returns once it can (the manager then polls `ready`)."""
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
