"""The HTTP surface: the model-routed endpoints (hub/gateway.py, in front), /v1/models, /files, /health, the /hub
admin routes (hub/admin.py), and the web app at /. Every HubError becomes an error body here or in the gateway, and
nowhere else; unknown paths and wrong methods under the API's prefixes get API errors, never the web app's page.
"""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from hub.admin import router as admin_router
from hub.batches.api import router as batch_router
from hub.batches.service import Batches
from hub.config import Registry
from hub.downloads.api import router as download_router
from hub.endpoints import API_PREFIXES, ENDPOINTS, dialect_of, endpoints_of, tasks_of
from hub.errors import HubError, MethodNotAllowed, NotFound, RequestError, UpstreamError
from hub.gateway import ApiKeyMiddleware, Gateway
from hub.manager import Manager
from hub.metrics import CONTENT_TYPE, Metrics
from hub.reloading import Reloading, Triggers
from hub.vocab import OPENAI_KINDS, error_body, shaped_error

# The names the image server gives its files (imageserver/files.py: secrets.token_urlsafe, then the format's
# extension); anything else is refused before an engine is asked. tests/test_hostile.py checks that they agree.
FILE_NAME = re.compile(r"[A-Za-z0-9_-]{16,128}\.(?:png|jpe?g|webp)")


def hub_error_response(err: HubError, path: str = "") -> JSONResponse:
    """A HubError as a JSON response with its status and headers, in the dialect of the path's clients."""
    return JSONResponse(shaped_error(err, dialect_of(path)), err.status, headers=err.headers)


def model_object(s: Any) -> dict[str, Any]:
    """The OpenAI model object of a registered model, with the hub's own fields: its kind (`type`), the endpoints
    it serves, its engine, state and note, and what its engine tells clients (an image model's defaults and limits)."""
    return {"id": s.id, "object": "model", "created": 0, "owned_by": "hub", "type": s.cfg.type,
            "endpoints": endpoints_of(s.cfg.type, s.cfg.tasks), "engine": s.cfg.engine, "state": s.state.value,
            "description": s.cfg.description, **s.engine.describe(s.cfg),
            **({"loras": [f"{s.id}:{n}" for n in s.cfg.loras]} if s.cfg.loras else {})}


def adapter_object(s: Any, name: str) -> dict[str, Any]:
    """The model object of LoRA adapter `name` of a registered model: requested as `<id>:<name>` on every endpoint
    the model serves; `parent` and `root` as vLLM lists its adapters."""
    lora = s.cfg.loras[name]
    base = {k: v for k, v in model_object(s).items() if k != "loras"}
    return {**base, "id": f"{s.id}:{name}", "parent": s.id, "root": lora.source,
            "lora": {"name": name, "scale": lora.scale},
            "description": lora.description or f"LoRA adapter {name!r} on {s.id}"}


def models_list(slots: Any) -> list[dict[str, Any]]:
    """/v1/models: every registered model, each followed by its LoRA adapters."""
    return [obj for s in slots if not s.removed
            for obj in (model_object(s), *(adapter_object(s, n) for n in s.cfg.loras))]


class HubApp(FastAPI):
    """FastAPI with `front` (the API key check, then the gateway) ahead of its whole stack: the model-routed
    endpoints never pass through Starlette's and FastAPI's middleware (an error handler, FastAPI's telemetry and
    body limit: a few µs each per request); the rest reaches FastAPI as before. Unexpected errors in front are
    answered by the gateway itself (hub/gateway.py)."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def behind(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own stack: what the gateway passes on."""
        await super().__call__(scope, receive, send)


def create_app(registry: Registry, manager: Manager | None = None, ui: bool = True,
               reloading: Reloading | None = None) -> HubApp:
    """The hub's ASGI app: the gateway in front, /v1/models, /files, the admin API and (if `ui`) the web app at /.
    `reloading`: where registry reloads come from (default: POST /hub/reload rereads the registry's file)."""
    manager = manager or Manager(registry)
    reloading = reloading or Reloading(registry.path)
    triggers = Triggers(manager, reloading)
    metrics = Metrics(manager)
    gateway = Gateway(manager, metrics=metrics)
    files_client = httpx.AsyncClient(timeout=httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=None),
                                     trust_env=False)  # the hub's own engines: never via a proxy
    api_key = registry.api_key()
    batches = Batches(registry, manager, gateway, metrics.batch_lines)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await manager.startup()
        await batches.start()
        triggers.start()
        try:
            yield
        finally:
            await triggers.stop()
            await batches.stop()
            await manager.shutdown()
            await gateway.close()
            await files_client.aclose()

    app = HubApp(title="hub", version="0.1.0", lifespan=lifespan, docs_url="/hub/docs",
                  openapi_url="/hub/openapi.json", redoc_url=None)
    app.state.manager = manager
    app.state.registry = registry
    app.state.gateway = gateway
    app.state.batches = batches
    app.state.reloading = reloading

    def took(new: Registry) -> None:  # a registry reload (hub/manager/reload.py): who else holds the registry
        app.state.registry = batches.registry = new
        gateway.limit_bodies(new.hub)

    manager.reloads.listen(took)

    gateway.wrap(app.behind)
    app.front = ApiKeyMiddleware(gateway, key=api_key, env_name=registry.hub.api_key_env or "") if api_key else gateway

    @app.exception_handler(HubError)
    async def on_hub_error(request: Request, err: HubError) -> JSONResponse:
        return hub_error_response(err, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return hub_error_response(RequestError(f"{param or 'request'}: {first['msg']}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind, code = OPENAI_KINDS.get(err.status_code, ("invalid_request_error", None) if err.status_code < 500
                                      else ("server_error", None))
        msg = f"{request.method} {request.url.path}: {err.detail}"
        return JSONResponse(error_body(msg, kind, None, code), err.status_code)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": models_list(manager.slots.values())}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        s = manager.slot(model_id)
        return model_object(s) if s.id == model_id else adapter_object(s, model_id[len(s.id) + 1:])

    @app.get("/files/{model}/{name}")
    async def image_file(model: str, name: str) -> Response:
        """Images made with response_format=url: unguessable names, served by the engine that made them."""
        s = manager.slot(model)
        if "images" not in tasks_of(s.cfg.type, s.cfg.tasks):
            raise NotFound(f"model {model!r} makes no files: /files/<model>/<name> serves the images an image model "
                           "made with response_format=url", param="model")
        shown = name if len(name) <= 80 else name[:80] + "..."
        if not FILE_NAME.fullmatch(name):
            raise NotFound(f"no image {shown!r}: image names are the ones an image model's answer gave (letters, "
                           "digits, - and _, then .png, .jpeg or .webp)", param="name")
        gone = f"image {shown!r} is gone"
        if not s.handle:
            raise NotFound(f"{gone}: model {model!r} is not running (its images went with it): generate it again")
        try:
            r = await files_client.get(f"{s.handle.base_url}/files/{name}")
        except httpx.HTTPError as err:
            raise UpstreamError(f"model {model!r} did not answer for image {shown!r}: {type(err).__name__}: {err}; see "
                                f"`hub logs {model}`") from None
        if r.status_code != 200:  # the engine's own 404 (or worse) is not passed on
            raise NotFound(f"{gone}: images are kept for a limited time and count by the model that made them: "
                           "generate it again")
        return Response(r.content, 200, media_type=r.headers.get("content-type"))

    # ---- the gateway's endpoints, listed in the API docs (/hub/docs) only: the gateway answers them first ----

    async def served_by_the_gateway() -> None:
        raise NotFound("served by the gateway")  # pragma: no cover - the gateway takes these paths first

    by_id = [("/v1/responses/{response_id}", "GET", "a response, from the model that made it"),
             ("/v1/responses/{response_id}", "DELETE", "delete a response at the model that made it"),
             ("/v1/responses/{response_id}/cancel", "POST", "cancel a response at the model that made it")]
    documented = [(p, ep.method, f"{ep.task}: forwarded to a model that serves it ({ep.body} body)")
                  for ep in ENDPOINTS for p in ep.paths]
    for path, method, summary in documented + by_id:
        app.add_api_route(path, served_by_the_gateway, methods=[method], tags=["models"], summary=summary,
                          operation_id=f"{method.lower()}{path.replace('/', '_').replace('{', '').replace('}', '')}")

    # ---- admin (hub/admin.py), batches (hub/batches/api.py): before the web app, mounted at /, would shadow them ----

    app.include_router(admin_router)
    app.include_router(download_router)
    app.include_router(batch_router)

    # ---- anything else under the API's prefixes: a 404 or 405 in the API's shape, never the web app's page ----

    async def not_served(request: Request) -> JSONResponse:
        routes = [r for r in app.router.routes
                  if not isinstance(r, Mount) and getattr(r, "endpoint", None) is not not_served]
        allowed = [m for m in every_method if m != request.method
                   and any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]
        path = request.url.path
        if allowed:
            return hub_error_response(MethodNotAllowed(request.method, path, allowed), path)
        return hub_error_response(NotFound(
            f"{request.method} {path}: the hub serves no such endpoint; see GET /v1/models for the models and the "
            "endpoints each serves"), path)

    every_method = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    for prefix in API_PREFIXES:
        app.add_api_route(prefix, not_served, methods=every_method, include_in_schema=False)
        app.add_api_route(prefix + "/{rest:path}", not_served, methods=every_method, include_in_schema=False)

    if ui:
        from hub.ui import mount_ui

        mount_ui(app, registry)
    return app
