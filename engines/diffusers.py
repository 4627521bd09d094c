"""The `diffusers` engine: the project's image server (engines/diffusers_server.py) around a Diffusers pipeline,
from its own environment (process runtime) or the image built from docker/diffusers/Dockerfile (docker runtime)."""

from __future__ import annotations

import json
from typing import ClassVar

from pydantic import BaseModel

from engines.base import Engine, LaunchContext, LaunchSpec
from engines.diffusers_api import ServerOptions

DEFAULT_IMAGE = "hub-diffusers:latest"


class DiffusersArgs(ServerOptions):
    """The `args` table of a diffusers model: the image server's own options (engines/diffusers_api.py), passed to
    it as JSON."""


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
