"""The `diffusers` engine: the project's image server (imageserver/) around a Diffusers pipeline, from the diffusers
engine environment or the image built from docker/diffusers/Dockerfile.

Sleep: POST /sleep drops the pipeline (the process, its imports and the model's path stay; CUDA's cache is emptied)
and POST /wake loads it again on the server's worker thread, answering once it serves.

LoRA adapters (`[models.x.loras]`) go to the server at start (--loras): it loads each once (and again on wake) and
applies the one a request names (`lora`, `lora_scale`, or the model id `<its name>:<adapter>` the gateway sends)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel

from hub.engines.base import Engine, LaunchContext, LaunchSpec, Patterns, weight_patterns
from imageserver.api import LoraSpec, ServerOptions

DEFAULT_IMAGE = "hub-diffusers:latest"
# the options a client builds its form from (the web app's Image tab): defaults, then limits
PUBLIC_OPTIONS = ("default_size", "default_steps", "default_guidance", "quality_steps", "max_size", "max_n",
                  "max_batch", "max_input_images", "max_prompt_chars")


class DiffusersArgs(ServerOptions):
    """The `args` table of a diffusers model: the image server's own options (imageserver/api.py), passed to
    it as JSON. The hub imports only that torch-free module of the image server."""


class DiffusersEngine(Engine):
    """The Diffusers image server."""

    name: ClassVar[str] = "diffusers"
    Args: ClassVar[type[BaseModel]] = DiffusersArgs
    needs_source: ClassVar[bool] = True
    kinds: ClassVar[tuple[str, ...] | None] = ("image",)
    lora_kinds: ClassVar[tuple[str, ...]] = ("image",)

    def describe(self, model: Any) -> dict[str, Any]:
        """The image options a form needs, as {"image": {...}} (those this version of the server has)."""
        a = self.args(model)
        return {"image": {k: getattr(a, k) for k in PUBLIC_OPTIONS if getattr(a, k, None) is not None}}

    def sleep_refusal(self, model: Any) -> str | None:
        return None

    async def sleep(self, client: httpx.AsyncClient, base_url: str, model: Any, timeout: float) -> None:
        (await client.post(f"{base_url}/sleep", timeout=timeout)).raise_for_status()

    async def wake(self, client: httpx.AsyncClient, base_url: str, model: Any, timeout: float) -> None:
        (await client.post(f"{base_url}/wake", timeout=timeout)).raise_for_status()

    def download_patterns(self, model: Any, files: list[str]) -> Patterns:
        """Safetensors, not their duplicates (a pipeline's components often ship both)."""
        return None, weight_patterns(files)

    def launch(self, ctx: LaunchContext) -> LaunchSpec:
        a = self.args(ctx.model)
        args = ["--model", ctx.source(), "--served-model-name", ctx.model_id, "--port", str(ctx.port),
                "--options", json.dumps(a.model_dump())]
        if revision := ctx.revision():
            args += ["--revision", revision]
        loras = lora_specs(ctx)
        if loras:
            args += ["--loras", json.dumps(loras)]
        return LaunchSpec(args=args, env_name="diffusers", module="imageserver", image=ctx.model.image or DEFAULT_IMAGE,
                          environ=dict(ctx.model.env), model_path=ctx.local_source(), served_name=ctx.model_id,
                          gpus=ctx.model.gpus,
                          extra_paths=[s["source"] for s in loras.values() if Path(s["source"]).is_absolute()])


def lora_specs(ctx: LaunchContext) -> dict[str, dict[str, Any]]:
    """The model's LoRA adapters as the image server's --loras takes them (imageserver.api.LoraSpec), their sources
    resolved as the model's own is: local paths absolute (a container mounts them at the same path), hub repos as
    they are (the server downloads them into the Hugging Face cache)."""
    return {name: LoraSpec(source=ctx.resolve(lora.source), weight_name=lora.weight_name,
                           scale=lora.scale).model_dump()
            for name, lora in ctx.model.loras.items()}


engine = DiffusersEngine()
