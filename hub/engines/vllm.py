"""The `vllm` engine: vLLM's OpenAI-compatible server, from its own environment (process runtime) or the
vllm/vllm-openai image (docker runtime). Ready when /health is 200 and /v1/models lists the served name.

Rules that are not obvious:
- The served model name is the registry id, so requests name models as the registry does.
- vLLM takes 90% of a GPU's memory unless told otherwise, so two models could never share a card: when the registry
  gives `memory_gb` and not `gpu_memory_utilization`, the fraction is derived from memory_gb and the memory of the
  GPU the engine runs on, which the runtime reports for the engine's host (none known: nothing is derived).
  Without a GPU (vLLM-CPU) nothing is derived; `kv_cache_space_gb` sets VLLM_CPU_KVCACHE_SPACE instead.
- A model's kind picks vLLM's runner: text and transcription models generate, embedding and rerank models run the
  pooling runner (`convert` turns a generative checkpoint into an embedder or classifier where one is needed).
- Tool calling is on for text models, so that clients which send `tools` (Open WebUI, agents, the openai SDK's
  tool_choice auto) work: auto tool choice with the tool-call parser of the model's family. vLLM cannot guess a
  family, except for checkpoints that ship a response template (its "hf" parser); otherwise the parser is derived
  from the model's name and config (TOOL_PARSERS), and "hermes" where nothing matches: its <tool_call> tags are
  what most open models emit, and a model that never emits them answers with plain text. `tool_call_parser = "none"`
  turns tool calling off; the hub then refuses `tools` with a 400 naming that key. vLLM holds tool arguments to
  their schema only for tools declared `strict` unless it runs with `--tool-strict-level parameter`, which the hub
  passes by default: clients declare tools without `strict` (LangChain, the anthropic SDK), and a forced call
  (`tool_choice` naming a function, "required", Anthropic's tool/any) otherwise gave arguments that are not a JSON
  object. Plain answers are unchanged; `tool_strict_level = "auto"` restores vLLM's default.
- The server is `python -m vllm.entrypoints.openai.api_server` from the vllm engine environment: the `vllm` console
  script fails in a vllm-cpu environment (its distribution is not named `vllm`). In a container it is the image's
  entrypoint. vLLM's workers share tensors through /dev/shm: the spec asks for the host's shared memory.
- Sleep (a model's `sleep = true`) needs `enable_sleep_mode` (CUDA/ROCm only; it sets VLLM_SERVER_DEV_MODE, which
  serves /sleep and /wake_up). `sleep_level` 1 moves the weights to CPU RAM (it holds about memory_gb asleep) and
  wakes by copying them back; level 2 drops them (little RAM) and wakes by reloading them from the model's files
  (/wake_up?tags=weights, /collective_rpc reload_weights, then /wake_up for the rest).
- LoRA adapters (`[models.x.loras]`, text models): vLLM runs with --enable-lora and one --lora-modules entry per
  adapter, named `<served name>:<adapter>` (what the gateway sends for model id `x:<adapter>`), in vLLM's JSON form
  so that its /v1/models lists each as a child of the model (`parent`). Every adapter is loaded at start and picked
  per request: switching adapters reloads nothing. --max-loras (adapters in one batch) is the number of adapters
  unless args.max_loras says less (the rest wait in vLLM's CPU cache: --max-cpu-loras); --max-lora-rank is the
  largest `r` of the local adapters' adapter_config.json, rounded up to a rank vLLM takes (args.max_lora_rank
  overrides; vLLM's default, 16, where no adapter is local). vLLM allocates its LoRA buffers for max_loras adapters
  of max_lora_rank on every layer it can adapt, beside the weights: memory_gb must hold them. vLLM loads a peft
  folder (adapter_config.json, adapter_model.safetensors), at the strength it was trained with: a file, a
  weight_name or a scale is refused. A local folder is mounted into the container like the model's (extra_paths).
  An adapter that is a hub repo id is downloaded by vLLM itself at start (a pulled model with such an adapter
  starts online: hub/downloads/target.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from hub.engines.base import SLEEP_PROCESS_GB, Engine, LaunchContext, LaunchSpec, Patterns, weight_patterns
from hub.errors import RuntimeFailure

DEFAULT_IMAGE = "vllm/vllm-openai:v0.32.0"
MAX_GPU_FRACTION = 0.95  # leave the rest for CUDA context and other processes
RUNNERS = {"text": "generate", "transcription": "generate", "embedding": "pooling", "rerank": "pooling"}
NO_TOOLS = "none"
FALLBACK_PARSER = "hermes"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank takes
LOCAL_PREFIXES = (".", "/", "~", "{state_dir}")  # a source that starts so is a local path, else a hub repo id
# vLLM's tool-call parser by model family: the first fragment found in the model's name, source or config wins.
TOOL_PARSERS: tuple[tuple[str, str], ...] = (
    ("qwen3-coder", "qwen3_coder"), ("qwen3_coder", "qwen3_coder"), ("qwen", "hermes"), ("qwq", "hermes"),
    ("hermes", "hermes"), ("llama-4", "llama4_pythonic"), ("llama4", "llama4_pythonic"),
    ("llama-3", "llama3_json"), ("llama3", "llama3_json"), ("mistral", "mistral"), ("mixtral", "mistral"),
    ("ministral", "mistral"), ("devstral", "mistral"), ("magistral", "mistral"),
    ("deepseek-v3.1", "deepseek_v31"), ("deepseek-v3", "deepseek_v3"), ("deepseek-r1", "deepseek_v3"),
    ("deepseek_v3", "deepseek_v3"), ("gpt-oss", "openai"), ("gpt_oss", "openai"), ("granite-4", "granite4"),
    ("granite", "granite"), ("kimi-k2", "kimi_k2"), ("glm-4.7", "glm47"), ("glm-4.5", "glm45"),
    ("glm-4.6", "glm45"), ("internlm", "internlm"), ("jamba", "jamba"), ("phi-4-mini", "phi4_mini_json"),
    ("minimax-m2", "minimax_m2"), ("xlam", "xlam"), ("functiongemma", "functiongemma"), ("gemma-4", "gemma4"),
    ("olmo-3", "olmo3"), ("hunyuan-a13b", "hunyuan_a13b"), ("seed-oss", "seed_oss"), ("ernie-4.5", "ernie45"),
    ("lfm2", "lfm2"), ("longcat", "longcat"), ("apertus", "apertus"),
)


class VllmArgs(BaseModel):
    """The `args` table of a vllm model (each key maps to one vLLM server flag or environment variable)."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "bfloat16", "float16", "float32", "half", "float"] = "auto"
    max_model_len: int | None = Field(None, gt=0)
    quantization: str | None = None
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    enforce_eager: bool = False
    enable_sleep_mode: bool = False
    sleep_level: Literal[1, 2] = 1  # 1: weights to CPU RAM (fast wake); 2: weights dropped (reloaded on wake)
    trust_remote_code: bool = False
    kv_cache_space_gb: int | None = Field(None, ge=1)  # vLLM-CPU only: VLLM_CPU_KVCACHE_SPACE (whole GB)
    tool_call_parser: str | None = None  # None: derived from the model (text models); "none": no tool calling
    # how closely vLLM holds tool calls to their schemas: "parameter" holds every tool's arguments to its schema, as
    # if each were `strict` (forced calls from clients that declare tools without `strict` then give objects);
    # "function" the call's envelope only; "auto" vLLM's default (arguments held only for strict tools)
    tool_strict_level: Literal["auto", "function", "parameter"] = "parameter"
    # defaults of requests that do not set them (temperature, top_p, max_tokens ...), over the model's own
    # generation_config.json: --override-generation-config
    override_generation_config: dict[str, Any] | None = None
    chat_template: str | None = None  # a Jinja file (or a path in the engine's image) replacing the model's own
    store_responses: bool = False  # keep Responses API results for GET by id (vLLM never frees them)
    runner: Literal["generate", "pooling"] | None = None  # None: from the model's type
    convert: Literal["none", "embed", "classify"] | None = None  # None: vLLM decides from the checkpoint
    # LoRA adapters ([models.x.loras]): how many one batch may mix (None: all of them) and the largest rank vLLM
    # makes room for (None: read from the local adapters)
    max_loras: int | None = Field(None, ge=1)
    max_lora_rank: Literal[LORA_RANKS] | None = None  # type: ignore[valid-type]
    extra_args: list[str] = Field(default_factory=list)


def adapter_rank(folder: str) -> int | None:
    """The rank `r` of a local peft adapter (its adapter_config.json); None where it has none readable."""
    try:
        r = json.loads((Path(folder) / "adapter_config.json").read_text()).get("r")
    except (OSError, ValueError):
        return None
    return r if isinstance(r, int) and r > 0 else None


def lora_rank(ranks: list[int]) -> int | None:
    """The --max-lora-rank that holds every rank: the smallest of LORA_RANKS at least as large (None: no rank)."""
    if not ranks:
        return None
    return next((r for r in LORA_RANKS if r >= max(ranks)), LORA_RANKS[-1])


def model_facts(source: str) -> str:
    """What names a model's family: its source, plus model_type and architectures from its config where the source
    is a local folder (lowercased)."""
    facts = [source]
    config = Path(source) / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
            facts += [str(data.get("model_type", "")), *map(str, data.get("architectures") or [])]
        except (OSError, ValueError):
            pass
    return " ".join(facts).lower()


def has_response_template(source: str) -> bool:
    """Whether a local checkpoint ships a response template, which vLLM's "hf" parser reads tool calls with."""
    config = Path(source) / "tokenizer_config.json"
    try:
        return config.is_file() and "response_template" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def tool_parser(model_id: str, source: str) -> str:
    """The tool-call parser of a model's family (FALLBACK_PARSER where no family is known)."""
    if has_response_template(source):
        return "hf"
    facts = f"{model_id.lower()} {model_facts(source)}"
    return next((parser for fragment, parser in TOOL_PARSERS if fragment in facts), FALLBACK_PARSER)


def gpu_memory_utilization(memory_gb: float, total_gb: float) -> float:
    """The fraction of a GPU's memory that gives vLLM `memory_gb` of `total_gb`: rounded up to the hundredth,
    at least 0.01 and at most MAX_GPU_FRACTION."""
    if total_gb <= 0:
        raise ValueError(f"GPU memory must be positive, got {total_gb:g} GB")
    fraction = math.ceil(round(memory_gb / total_gb * 100, 6)) / 100
    return min(MAX_GPU_FRACTION, max(0.01, fraction))


class VllmEngine(Engine):
    """vLLM's OpenAI-compatible API server."""

    name: ClassVar[str] = "vllm"
    Args: ClassVar[type[BaseModel]] = VllmArgs
    needs_source: ClassVar[bool] = True
    kinds: ClassVar[tuple[str, ...] | None] = tuple(RUNNERS)
    lora_kinds: ClassVar[tuple[str, ...]] = ("text",)

    def problems(self, model: Any) -> list[str]:
        """The engine's checks, and the LoRA adapters vLLM cannot serve as the registry gives them."""
        out = super().problems(model)
        for name, lora in model.loras.items():
            at = f"loras.{name}"
            if lora.source.endswith(".safetensors"):
                out.append(f"{at}.source: vLLM loads a peft adapter folder (adapter_config.json and "
                           "adapter_model.safetensors), not a single file: give the folder")
            if lora.weight_name:
                out.append(f"{at}.weight_name: vLLM loads a peft adapter folder's adapter_model.safetensors: "
                           "leave weight_name out")
            if lora.scale != 1.0:
                out.append(f"{at}.scale: vLLM applies an adapter at the strength it was trained with "
                           "(lora_alpha / r): leave scale out")
        return out

    def lora_args(self, ctx: LaunchContext, a: VllmArgs) -> list[str]:
        """--enable-lora and its flags: one --lora-modules entry per adapter, named <served name>:<adapter>.
        RuntimeFailure for a local adapter folder that is not a peft adapter."""
        paths = {name: ctx.resolve(lora.source) for name, lora in ctx.model.loras.items()}
        ranks = []
        for name, path in paths.items():
            if not Path(path).is_absolute():
                continue  # a hub repo id: vLLM downloads it (problems() made sure it may)
            if (r := adapter_rank(path)) is None:
                raise RuntimeFailure(f"model {ctx.model_id!r}: LoRA adapter {name!r}: {path} has no readable "
                                     "adapter_config.json with its rank `r`: give a peft adapter folder "
                                     "(save_pretrained writes one)")
            ranks.append(r)
        modules = [json.dumps({"name": f"{ctx.model_id}:{name}", "path": path, "base_model_name": ctx.model_id})
                   for name, path in paths.items()]
        batch = min(a.max_loras or len(paths), len(paths))
        argv = ["--enable-lora", "--lora-modules", *modules, "--max-loras", str(batch)]
        if a.max_loras and a.max_loras < len(paths):
            argv += ["--max-cpu-loras", str(len(paths))]
        if rank := a.max_lora_rank or lora_rank(ranks):
            argv += ["--max-lora-rank", str(rank)]
        return argv

    def memory_fraction(self, ctx: LaunchContext, a: VllmArgs) -> float | None:
        """--gpu-memory-utilization: as given, else derived from memory_gb (per GPU) and the GPU's memory."""
        if a.gpu_memory_utilization:
            return a.gpu_memory_utilization
        if not ctx.model.memory_gb:
            return None
        total = ctx.gpu_total_gb(a.tensor_parallel_size)
        return gpu_memory_utilization(ctx.model.memory_gb / a.tensor_parallel_size, total) if total else None

    def server_args(self, ctx: LaunchContext, a: VllmArgs, fraction: float | None = None) -> list[str]:
        """The arguments of vLLM's API server, common to both runtimes."""
        argv = ["--model", ctx.source(), "--served-model-name", ctx.model_id, "--port", str(ctx.port)]
        if revision := ctx.revision():
            argv += ["--revision", revision]
        argv += ["--dtype", a.dtype]
        if a.max_model_len:
            argv += ["--max-model-len", str(a.max_model_len)]
        if a.quantization:
            argv += ["--quantization", a.quantization]
        if a.tensor_parallel_size > 1:
            argv += ["--tensor-parallel-size", str(a.tensor_parallel_size)]
        if fraction:
            argv += ["--gpu-memory-utilization", f"{fraction:g}"]
        if a.enforce_eager:
            argv.append("--enforce-eager")
        if a.enable_sleep_mode:
            argv.append("--enable-sleep-mode")
        if a.trust_remote_code:
            argv.append("--trust-remote-code")
        runner = a.runner or RUNNERS.get(ctx.model.type)
        if runner == "pooling" or a.runner:
            argv += ["--runner", runner]
        if a.convert:
            argv += ["--convert", a.convert]
        if runner == "generate" and ctx.model.type == "text" and a.tool_call_parser != NO_TOOLS:
            argv += ["--enable-auto-tool-choice",
                     "--tool-call-parser", a.tool_call_parser or tool_parser(ctx.model_id, ctx.source())]
            if a.tool_strict_level != "auto":
                argv += ["--tool-strict-level", a.tool_strict_level]
        if a.override_generation_config:
            argv += ["--override-generation-config", json.dumps(a.override_generation_config)]
        if a.chat_template:  # passed inline when the file is here: a container cannot see the hub's files
            path = ctx.registry.resolve_path(a.chat_template)
            argv += ["--chat-template", path.read_text() if path.is_file() else a.chat_template]
        if ctx.model.loras:
            argv += self.lora_args(ctx, a)
        return argv + list(a.extra_args)

    def download_patterns(self, model: Any, files: list[str]) -> Patterns:
        """Safetensors, not their duplicates; not Meta's `original/` checkpoint nor a `consolidated` file next to
        sharded ones (Mistral's repos hold both)."""
        ignore = weight_patterns(files)
        if any(f.endswith(".safetensors") for f in files):
            ignore.append("original/*")
            if any(f.endswith(".safetensors") and not f.startswith("consolidated") for f in files):
                ignore.append("consolidated*")
        return None, ignore

    def context_length(self, model: Any) -> int | None:
        # on every request: read from the table the registry validated, not validated again (a few µs each)
        return model.args.get("max_model_len")

    def describe(self, model: Any) -> dict[str, Any]:
        """The context length, as vLLM's own /v1/models gives it (`max_model_len`), where the registry sets it."""
        n = self.context_length(model)
        return {"max_model_len": n} if n else {}

    def refusal(self, model: Any, task: str, body: dict[str, Any]) -> str | None:
        """A request with tools to a model whose tool calling is off: say which key turns it on."""
        if task not in ("chat", "responses") or not body.get("tools") or body.get("tool_choice") == "none":
            return None
        if model.args.get("tool_call_parser") == NO_TOOLS:
            return ("this model has tool calling off (args.tool_call_parser = \"none\"): set args.tool_call_parser "
                    "to its family's parser (hermes, llama3_json, mistral, ...) or leave it out to derive it, or "
                    "send the request without tools")
        return None

    def sleep_refusal(self, model: Any) -> str | None:
        if not self.args(model).enable_sleep_mode:
            return ("vLLM serves sleep only with sleep mode on: set args.enable_sleep_mode = true (CUDA or ROCm "
                    "GPUs only), or sleep = false")
        return None

    def sleep_memory_gb(self, model: Any) -> float:
        """Level 1 keeps the weights in CPU RAM (memory_gb bounds them); level 2 keeps the process only."""
        extra = (model.memory_gb or 0.0) if self.args(model).sleep_level == 1 else 0.0
        return SLEEP_PROCESS_GB + extra

    async def sleep(self, client: httpx.AsyncClient, base_url: str, model: Any, timeout: float) -> None:
        level = self.args(model).sleep_level
        r = await client.post(f"{base_url}/sleep", params={"level": level}, timeout=timeout)
        r.raise_for_status()

    async def wake(self, client: httpx.AsyncClient, base_url: str, model: Any, timeout: float) -> None:
        if self.args(model).sleep_level == 2:  # the weights were dropped: reload them from the model's files
            (await client.post(f"{base_url}/wake_up", params={"tags": "weights"}, timeout=timeout)).raise_for_status()
            (await client.post(f"{base_url}/collective_rpc", json={"method": "reload_weights"},
                               timeout=timeout)).raise_for_status()
        (await client.post(f"{base_url}/wake_up", timeout=timeout)).raise_for_status()

    def launch(self, ctx: LaunchContext) -> LaunchSpec:
        a: VllmArgs = self.args(ctx.model)
        env = dict(ctx.model.env)
        if a.kv_cache_space_gb:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(a.kv_cache_space_gb)
        if a.store_responses:
            env["VLLM_ENABLE_RESPONSES_API_STORE"] = "1"  # vLLM's in-memory store: GET, cancel, previous_response_id
        if a.enable_sleep_mode:
            env.setdefault("VLLM_SERVER_DEV_MODE", "1")  # vLLM exposes /sleep and /wake_up only in dev mode
        return LaunchSpec(
            args=self.server_args(ctx, a, self.memory_fraction(ctx, a)),
            env_name="vllm",
            module="vllm.entrypoints.openai.api_server",
            image=ctx.model.image or DEFAULT_IMAGE,
            environ=env,
            model_path=ctx.local_source(),
            extra_paths=[p for lora in ctx.model.loras.values() if Path(p := ctx.resolve(lora.source)).is_absolute()],
            served_name=ctx.model_id,
            gpus=ctx.model.gpus or "all",
            shared_memory=True,
        )


engine = VllmEngine()
