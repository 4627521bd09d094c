"""The `command` engine: any OpenAI-compatible server started from a command line with a `{port}` placeholder
(as in llama-swap), ready when its `health` path answers 200."""

from __future__ import annotations

from typing import ClassVar

from engines.base import Engine, LaunchContext, LaunchSpec
from hub.config import ModelConfig


class CommandEngine(Engine):
    """Runs `command`, with `{port}` and `{model}` substituted."""

    name: ClassVar[str] = "command"

    def problems(self, model: ModelConfig) -> list[str]:
        out = super().problems(model)
        if not model.command:
            out.append('command: engine \'command\' needs command = ["server", "--port", "{port}", ...]')
        elif not any("{port}" in part for part in model.command):
            out.append("command: must contain the {port} placeholder so that the hub can choose the port")
        if not model.health.startswith("/"):
            out.append(f"health: {model.health!r} must be a path starting with /")
        return out

    def launch(self, ctx: LaunchContext) -> LaunchSpec:
        argv = [p.replace("{port}", str(ctx.port)).replace("{model}", ctx.model_id) for p in ctx.model.command or []]
        return LaunchSpec(
            argv=argv,
            env=dict(ctx.model.env),
            cwd=ctx.registry.base_dir,
            health_path=ctx.model.health,
            image=ctx.model.image,
            gpus=ctx.model.gpus,
        )


engine = CommandEngine()
