"""The HTTP surface: OpenAI-compatible /v1 routes, /health, the /hub admin routes (hub/admin.py), and the web app at /.

Requests are routed by the registry's model type; bodies are passed to the engine as received (never re-encoded)
and streams are passed on chunk by chunk. Every HubError becomes an OpenAI-shaped error here and only here.
"""

from __future__ import annotations

import json
import secrets
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from hub.admin import router as admin_router
from hub.config import Registry
from hub.errors import AuthError, HubError, RequestError, UpstreamError, WrongModelType
from hub.manager import Lease, Manager

# Headers that describe one hop of a connection, not the message: never passed on.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host",
               "authorization", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection"}

API_PREFIXES = ("/v1", "/hub", "/files")  # never the web app's: unknown paths here get OpenAI-shaped errors
TEXT_ENDPOINTS = "/v1/chat/completions or /v1/completions"
IMAGE_ENDPOINTS = "/v1/images/generations or /v1/images/edits"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def hub_error_response(err: HubError) -> JSONResponse:
    """A HubError as an OpenAI-shaped JSON response with its status and headers."""
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), err.status, headers=err.headers)


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def _require(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        raise RequestError(f"missing required parameter '{name}' ({what})", param=name)
    if not isinstance(value, kind):
        raise RequestError(f"'{name}' must be {what}", param=name)
    return value


class ApiKeyMiddleware:
    """Requires `Authorization: Bearer <key>` on /v1 and /hub. Plain ASGI rather than @app.middleware("http"),
    whose per-request task and memory streams cost about 0.3 ms of CPU on every proxied request."""

    def __init__(self, app: ASGIApp, key: str, env_name: str) -> None:
        self.app, self.key, self.env_name = app, key.encode(), env_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and path.startswith(("/v1/", "/hub/")):
            given = Headers(scope=scope).get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not secrets.compare_digest(token.encode(), self.key):
                why = "missing" if not given else "wrong"
                err = AuthError(f"API key {why}: send 'Authorization: Bearer <key>' with the key in ${self.env_name}")
                await hub_error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Proxy:
    """Forwards requests to engines with one pooled aiohttp session (the hot path: httpx costs about 1 ms more CPU
    per request) and keeps an httpx client for the rare calls (image files)."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The pooled session to the engines (made on first use: it belongs to the running loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=None),
                skip_auto_headers=("User-Agent", "Accept-Encoding"),  # engines answer uncompressed
            )
        return self._session

    def check_type(self, model_id: str, wanted: str) -> None:
        """ModelNotFound for unknown ids; WrongModelType naming the right endpoint for the other kind."""
        slot = self.manager.slot(model_id)
        if slot.cfg.type != wanted:
            use = TEXT_ENDPOINTS if slot.cfg.type == "text" else IMAGE_ENDPOINTS
            article = "an" if slot.cfg.type == "image" else "a"
            raise WrongModelType(f"model {model_id!r} is {article} {slot.cfg.type} model: use {use}", param="model")

    async def forward(self, request: Request, model_id: str, path: str, raw: bytes, stream: bool,
                      extra_headers: dict[str, str] | None = None, body: dict[str, Any] | None = None) -> Response:
        """Acquire the model, send the body to its engine, and pass the answer (or stream) back. `body` is the
        parsed JSON, given when the engine may know the model under another name (then it is re-encoded)."""
        lease = await self.manager.acquire(model_id)
        if body is not None and lease.upstream.model and lease.upstream.model != model_id:
            raw = json.dumps({**body, "model": lease.upstream.model}).encode()
        try:
            headers = {"content-type": request.headers.get("content-type", "application/json")}
            if lease.upstream.api_key:
                headers["authorization"] = f"Bearer {lease.upstream.api_key}"
            headers.update(extra_headers or {})
            try:
                resp = await self.session().post(lease.upstream.base_url + path, data=raw, headers=headers)
            except (aiohttp.ClientError, TimeoutError) as err:
                raise self._upstream_error(lease, err) from None
        except BaseException:
            lease.release()
            raise
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
        if stream and resp.status == 200:
            return StreamingResponse(self._relay(resp, lease), status_code=200, headers=out_headers)
        try:
            body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as err:
            raise self._upstream_error(lease, err) from None
        finally:
            resp.release()
            lease.release()
        return Response(body, status_code=resp.status, headers=out_headers)

    async def _relay(self, resp: aiohttp.ClientResponse, lease: Lease):
        """Yield the engine's stream as it arrives; a broken stream ends with an SSE error event."""
        try:
            async for chunk in resp.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as err:
            e = self._upstream_error(lease, err)
            yield f"data: {json.dumps(error_body(e.message, e.type, None, e.code))}\n\n".encode()
        finally:
            resp.release()
            lease.release()

    def _upstream_error(self, lease: Lease, err: Exception) -> UpstreamError:
        s = lease.slot
        detail = f" ({s.reason})" if s.reason else ""
        return UpstreamError(
            f"model {s.id!r}: the engine broke off the request: {type(err).__name__}: {err or 'no detail'}{detail}; "
            f"see `hub logs {s.id}`"
        )

    async def close(self) -> None:
        """Close the pooled clients."""
        await self.client.aclose()
        if self._session is not None:
            await self._session.close()


def create_app(registry: Registry, manager: Manager | None = None, ui: bool = True) -> FastAPI:
    """The hub's ASGI app: router, admin API and (if `ui`) the web app at /."""
    manager = manager or Manager(registry)
    proxy = Proxy(manager)
    api_key = registry.api_key()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await manager.startup()
        try:
            yield
        finally:
            await manager.shutdown()
            await proxy.close()

    app = FastAPI(title="hub", version="0.1.0", lifespan=lifespan, docs_url="/hub/docs",
                  openapi_url="/hub/openapi.json", redoc_url=None)
    app.state.manager = manager
    app.state.registry = registry

    if api_key:
        app.add_middleware(ApiKeyMiddleware, key=api_key, env_name=registry.hub.api_key_env or "")

    @app.exception_handler(HubError)
    async def on_hub_error(request: Request, err: HubError) -> JSONResponse:
        return hub_error_response(err)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return hub_error_response(RequestError(f"{param or 'request'}: {first['msg']}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        msg = f"{request.method} {request.url.path}: {err.detail}"
        return JSONResponse(error_body(msg, kind, None, str(err.status_code)), err.status_code)

    # ---- OpenAI-compatible ----

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    def model_object(s: Any) -> dict[str, Any]:
        """The OpenAI model object of a registered model, with the hub's own fields."""
        return {"id": s.id, "object": "model", "created": 0, "owned_by": "hub", "type": s.cfg.type,
                "engine": s.cfg.engine, "state": s.state.value, "description": s.cfg.description}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_object(s) for s in manager.slots.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        return model_object(manager.slot(model_id))

    async def text_route(request: Request, path: str, field: str, what: str) -> Response:
        raw = await request.body()
        body = _json_body(raw)
        model = _require(body, "model", str, "the id of a registered text model")
        _require(body, field, (list, str) if field == "prompt" else list, what)
        proxy.check_type(model, "text")
        return await proxy.forward(request, model, path, raw, bool(body.get("stream")), body=body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await text_route(request, "/v1/chat/completions", "messages", "a list of messages")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await text_route(request, "/v1/completions", "prompt", "a string or a list of strings")

    def files_header(request: Request, model: str) -> dict[str, str]:
        return {"x-hub-files-url": f"{str(request.base_url).rstrip('/')}/files/{model}"}

    @app.post("/v1/images/generations")
    async def images_generations(request: Request) -> Response:
        raw = await request.body()
        body = _json_body(raw)
        model = _require(body, "model", str, "the id of a registered image model")
        _require(body, "prompt", str, "a text prompt")
        proxy.check_type(model, "image")
        return await proxy.forward(request, model, "/v1/images/generations", raw, False, files_header(request, model),
                                   body=body)

    @app.post("/v1/images/edits")
    async def images_edits(request: Request) -> Response:
        raw = await request.body()
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError("/v1/images/edits takes multipart/form-data with image, prompt and model fields")
        try:
            form = await request.form()
        except Exception as err:
            raise RequestError(f"the multipart body cannot be parsed: {err}") from None
        try:
            model = form.get("model")
            if not isinstance(model, str) or not model:
                raise RequestError("missing required parameter 'model' (the id of a registered image model)",
                                   param="model")
            if "image" not in form and "image[]" not in form:
                raise RequestError("missing required parameter 'image' (one or more image files)", param="image")
        finally:
            await form.close()
        proxy.check_type(model, "image")
        return await proxy.forward(request, model, "/v1/images/edits", raw, False, files_header(request, model))

    @app.get("/files/{model}/{name}")
    async def image_file(model: str, name: str) -> Response:
        """Images made with response_format=url: unguessable names, served by the engine that made them."""
        s = manager.slot(model)
        if not s.handle:
            raise StarletteHTTPException(404, f"image {name!r} is gone: model {model!r} is not running")
        r = await proxy.client.get(f"{s.handle.base_url}/files/{name}")
        return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))

    # ---- admin (hub/admin.py): before the web app, which is mounted at / and would shadow it ----

    app.include_router(admin_router)

    # ---- anything else under the API's prefixes: an OpenAI-shaped 404 or 405, never the web app's page ----

    async def not_served(request: Request) -> JSONResponse:
        routes = [r for r in app.router.routes
                  if not isinstance(r, Mount) and getattr(r, "endpoint", None) is not not_served]
        allowed = [m for m in every_method if m != request.method
                   and any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]
        path = request.url.path
        if allowed:
            msg = f"{request.method} {path} is not allowed: use {' or '.join(allowed)}"
            return JSONResponse(error_body(msg, "invalid_request_error", None, "method_not_allowed"), 405,
                                headers={"Allow": ", ".join(allowed)})
        msg = (f"{request.method} {path}: the hub serves no such endpoint; see GET /v1/models for the models and "
               "the README's endpoint table for what each kind serves")
        return JSONResponse(error_body(msg, "invalid_request_error", None, "not_found"), 404)

    every_method = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    for prefix in API_PREFIXES:
        app.add_api_route(prefix, not_served, methods=every_method, include_in_schema=False)
        app.add_api_route(prefix + "/{rest:path}", not_served, methods=every_method, include_in_schema=False)

    if ui:
        from hub.ui import mount_ui

        mount_ui(app, registry)
    return app
