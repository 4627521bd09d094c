"""The `vllm` engine: vLLM's OpenAI-compatible server, from its own environment (process runtime) or the
vllm/vllm-openai image (docker runtime). Ready when /health is 200 and /v1/models lists the served name.

Rules that are not obvious:
- The served model name is the registry id, so requests name models as the registry does.
- vLLM takes 90% of a GPU's memory unless told otherwise, so two models could never share a card: when the registry
  gives `memory_gb` and not `gpu_memory_utilization`, the fraction is derived from memory_gb and the memory of the
  GPU the engine runs on, which the runtime reports for the engine's host (none known: nothing is derived).
  Without a GPU (vLLM-CPU) nothing is derived; `kv_cache_space_gb` sets VLLM_CPU_KVCACHE_SPACE instead.
- The server is `python -m vllm.entrypoints.openai.api_server` from the vllm engine environment: the `vllm` console
  script fails in a vllm-cpu environment (its distribution is not named `vllm`). In a container it is the image's
  entrypoint. vLLM's workers share tensors through /dev/shm: the spec asks for the host's shared memory.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from hub.engines.base import Engine, LaunchContext, LaunchSpec

DEFAULT_IMAGE = "vllm/vllm-openai:v0.32.0"
MAX_GPU_FRACTION = 0.95  # leave the rest for CUDA context and other processes


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
    trust_remote_code: bool = False
    kv_cache_space_gb: int | None = Field(None, ge=1)  # vLLM-CPU only: VLLM_CPU_KVCACHE_SPACE (whole GB)
    extra_args: list[str] = Field(default_factory=list)


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
        return argv + list(a.extra_args)

    def launch(self, ctx: LaunchContext) -> LaunchSpec:
        a: VllmArgs = self.args(ctx.model)
        env = dict(ctx.model.env)
        if a.kv_cache_space_gb:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(a.kv_cache_space_gb)
        if a.enable_sleep_mode:
            env.setdefault("VLLM_SERVER_DEV_MODE", "1")  # vLLM exposes /sleep and /wake_up only in dev mode
        return LaunchSpec(
            args=self.server_args(ctx, a, self.memory_fraction(ctx, a)),
            env_name="vllm",
            module="vllm.entrypoints.openai.api_server",
            image=ctx.model.image or DEFAULT_IMAGE,
            environ=env,
            model_path=ctx.local_source(),
            served_name=ctx.model_id,
            gpus=ctx.model.gpus or "all",
            shared_memory=True,
        )


engine = VllmEngine()
