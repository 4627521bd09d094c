"""The `command` engine: any OpenAI-compatible server started from a command line with a `{port}` placeholder
(as in llama-swap), ready when its `health` path answers 200. Its keys are in the model's `args` table. It can sleep
where the server can: `sleep` and `wake` name the paths the hub POSTs to (a vLLM server in dev mode: "/sleep?level=1"
and "/wake_up")."""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub.engines.base import Engine, LaunchContext, LaunchSpec


class CommandArgs(BaseModel):
    """The `args` table of a command model."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(description='the server\'s command line, e.g. ["server", "--port", "{port}"]; '
                               "{port} is the port the hub chose, {model} the model id")
    health: str = Field("/health", description="the path that answers 200 once the server is ready")
    sleep: str | None = Field(None, description="the path POSTed to put it to sleep (model key sleep = true)")
    wake: str | None = Field(None, description="the path POSTed to wake it; it answers once the server serves")

    @field_validator("command")
    @classmethod
    def _has_port(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError('the command is empty: command = ["server", "--port", "{port}", ...]')
        if not any("{port}" in part for part in v):
            raise ValueError("must contain the {port} placeholder so that the hub can choose the port")
        return v

    @field_validator("health", "sleep", "wake")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"{v!r} must be a path starting with /")
        return v


class CommandEngine(Engine):
    """Runs `args.command`, with `{port}` and `{model}` substituted."""

    name: ClassVar[str] = "command"
    Args: ClassVar[type[BaseModel]] = CommandArgs

    def sleep_refusal(self, model: Any) -> str | None:
        a: CommandArgs = self.args(model)
        if not (a.sleep and a.wake):
            return ("the command engine sleeps through its server's own paths: set args.sleep and args.wake "
                    "(\"/sleep?level=1\" and \"/wake_up\" for a vLLM server), or sleep = false")
        return None

    async def sleep(self, client: httpx.AsyncClient, base_url: str, model: Any, timeout: float) -> None:
        (await client.post(base_url + self.args(model).sleep, timeout=timeout)).raise_for_status()

    async def wake(self, client: httpx.AsyncClient, base_url: str, model: Any, timeout: float) -> None:
        (await client.post(base_url + self.args(model).wake, timeout=timeout)).raise_for_status()

    def launch(self, ctx: LaunchContext) -> LaunchSpec:
        a: CommandArgs = self.args(ctx.model)
        argv = [p.replace("{port}", str(ctx.port)).replace("{model}", ctx.model_id) for p in a.command]
        return LaunchSpec(
            command=argv,
            environ=dict(ctx.model.env),
            cwd=ctx.registry.base_dir,
            bind_flag=None,
            health_path=a.health,
            image=ctx.model.image,
            gpus=ctx.model.gpus,
        )


engine = CommandEngine()
