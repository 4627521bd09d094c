"""The `diffusers` engine: the project's image server (engines/diffusers_server.py) around a Diffusers pipeline,
from its own environment (process runtime) or the image built from docker/diffusers/Dockerfile (docker runtime)."""

from __future__ import annotations

import json
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from engines.base import Engine, LaunchContext, LaunchSpec

DEFAULT_IMAGE = "hub-diffusers:latest"


class DiffusersArgs(BaseModel):
    """The `args` table of a diffusers model (passed to the image server as JSON)."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    attention_slicing: bool = False
    compile: bool = False
    scheduler: str | None = None
    max_size: int = Field(2048, ge=64)
    max_n: int = Field(4, ge=1)
    default_size: str = "1024x1024"
    default_steps: int = Field(30, ge=1)
    request_timeout: float = Field(600, gt=0)


class DiffusersEngine(Engine):
    """The Diffusers image server."""

    name: ClassVar[str] = "diffusers"
    Args: ClassVar[type[BaseModel]] = DiffusersArgs
    needs_source: ClassVar[bool] = True

    def server_args(self, ctx: LaunchContext) -> list[str]:
        """Arguments of the image server, common to both runtimes."""
        a = self.args(ctx.model)
        return ["--model", ctx.source(), "--served-model-name", ctx.model_id, "--port", str(ctx.port),
                "--options", json.dumps(a.model_dump())]

    def launch(self, ctx: LaunchContext) -> LaunchSpec:
        env = dict(ctx.model.env)
        if ctx.runtime == "docker":
            return LaunchSpec(argv=self.server_args(ctx), env=env, served_name=ctx.model_id,
                              image=ctx.model.image or DEFAULT_IMAGE, gpus=ctx.model.gpus)
        python = ctx.engine_python("diffusers")
        argv = [python, "-m", "engines.diffusers_server", "--host", "127.0.0.1", *self.server_args(ctx)]
        return LaunchSpec(argv=argv, env=env, served_name=ctx.model_id)


engine = DiffusersEngine()
