"""The `openai` engine: an OpenAI-compatible server that already runs at `base_url` and that the hub does not
manage (never started or stopped); the API key comes from the variable named by `api_key_env`, if any, and
`source` names the model on that server when it differs from the registry id."""

from __future__ import annotations

import os
from typing import ClassVar

from engines.base import Engine, Upstream
from hub.config import ModelConfig


class OpenAIEngine(Engine):
    """Proxies to an existing server."""

    name: ClassVar[str] = "openai"
    managed: ClassVar[bool] = False

    def problems(self, model: ModelConfig) -> list[str]:
        out = super().problems(model)
        if not model.base_url:
            out.append('base_url: engine \'openai\' needs base_url = "http://host:port/v1"')
        elif not model.base_url.startswith(("http://", "https://")):
            out.append(f"base_url: {model.base_url!r} must start with http:// or https://")
        return out

    def upstream(self, model: ModelConfig) -> Upstream:
        base = (model.base_url or "").rstrip("/")
        base = base.removesuffix("/v1")  # the router appends /v1/... itself
        key = os.environ.get(model.api_key_env) if model.api_key_env else None
        return Upstream(base_url=base, api_key=key, model=model.source)


engine = OpenAIEngine()
