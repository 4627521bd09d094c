"""The `vllm` engine: vLLM's OpenAI-compatible server, from its own environment (process runtime) or the
vllm/vllm-openai image (docker runtime). Ready when /health is 200 and /v1/models lists the served name."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from engines.base import Engine, LaunchContext, LaunchSpec

DEFAULT_IMAGE = "vllm/vllm-openai:v0.32.0"


class VllmArgs(BaseModel):
    """The `args` table of a vllm model."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "bfloat16", "float16", "float32", "half", "float"] = "auto"
    max_model_len: int | None = Field(None, gt=0)
    quantization: str | None = None
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    enforce_eager: bool = False
    enable_sleep_mode: bool = False
    trust_remote_code: bool = False
    kv_cache_space_gb: float | None = Field(None, gt=0)
    extra_args: list[str] = Field(default_factory=list)


class VllmEngine(Engine):
    """vLLM's OpenAI-compatible API server."""

    name: ClassVar[str] = "vllm"
    Args: ClassVar[type[BaseModel]] = VllmArgs
    needs_source: ClassVar[bool] = True

    def server_args(self, ctx: LaunchContext, a: VllmArgs) -> list[str]:
        """The arguments of vLLM's API server, common to both runtimes."""
        argv = ["--model", ctx.source(), "--served-model-name", ctx.model_id, "--port", str(ctx.port)]
        argv += ["--dtype", a.dtype]
        if a.max_model_len:
            argv += ["--max-model-len", str(a.max_model_len)]
        if a.quantization:
            argv += ["--quantization", a.quantization]
        if a.tensor_parallel_size > 1:
            argv += ["--tensor-parallel-size", str(a.tensor_parallel_size)]
        if a.gpu_memory_utilization:
            argv += ["--gpu-memory-utilization", str(a.gpu_memory_utilization)]
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
            env["VLLM_CPU_KVCACHE_SPACE"] = f"{a.kv_cache_space_gb:g}"
        if ctx.runtime == "docker":
            return LaunchSpec(
                argv=self.server_args(ctx, a),
                env=env,
                served_name=ctx.model_id,
                image=ctx.model.image or DEFAULT_IMAGE,
                gpus=ctx.model.gpus or "all",
                ipc_host=True,
            )
        python = ctx.engine_python("vllm")
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", *self.server_args(ctx, a)]
        return LaunchSpec(argv=argv, env=env, served_name=ctx.model_id)


engine = VllmEngine()
