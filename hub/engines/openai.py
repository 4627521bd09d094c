"""The `openai` engine: an OpenAI-compatible server that already runs at `args.base_url` and that the hub does not
manage (never started or stopped); the API key comes from the variable named by `args.api_key_env`, if any, and
`source` names the model on that server when it differs from the registry id."""

from __future__ import annotations

import os
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub.config import ModelConfig
from hub.engines.base import Engine, Upstream


class OpenAIArgs(BaseModel):
    """The `args` table of an openai model."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description='the server\'s OpenAI base URL, e.g. "http://host:port/v1"')
    api_key_env: str | None = Field(None, description="the environment variable that holds its API key")

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} must start with http:// or https://")
        return v


class OpenAIEngine(Engine):
    """Proxies to an existing server."""

    name: ClassVar[str] = "openai"
    managed: ClassVar[bool] = False
    Args: ClassVar[type[BaseModel]] = OpenAIArgs

    def upstream(self, model: ModelConfig) -> Upstream:
        a: OpenAIArgs = self.args(model)
        base = a.base_url.rstrip("/").removesuffix("/v1")  # the router appends /v1/... itself
        key = os.environ.get(a.api_key_env) if a.api_key_env else None
        return Upstream(base_url=base, api_key=key, model=model.source)


engine = OpenAIEngine()
