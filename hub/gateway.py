"""The model-routed endpoints (the route table of hub/endpoints.py) as a plain ASGI app in front of FastAPI.

One generic path serves every endpoint: read the body, find the model it names, check that the model serves the
endpoint, acquire the model (the manager starts it if needed), pass the body on as received and the answer back as
it arrives (through hub/upstream.py, the gateway's pooled HTTP/1.1 client to the engines). Streams go straight from
the engine's socket to ASGI `send`; a client that leaves closes the engine's response, so the engine stops
generating. Everything else (/v1/models, /files, /hub, the web app) goes to the app behind. Every HubError becomes
an error body here, in the client's dialect: OpenAI's shape everywhere, Anthropic's on /v1/messages.

Limits ([hub] in the registry), checked before any engine is asked: a body over max_body_mb (JSON) or max_upload_mb
(multipart) gets a 413, from its Content-Length before it is read, else as soon as the bytes read pass the limit
(uvicorn discards the rest as it arrives: the connection stays usable and the client reads its 413); a JSON body
is checked as hub/bodies.py says (400 naming the problem). The /hub admin API's JSON bodies get the same checks and
finite numbers. The request head's limits (431) are `hub serve`'s (hub/cli.py): the server reads the head.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.bodies import BodyLimit, ClientGone, Watch, json_object, read_body
from hub.codings import decoded
from hub.config import HubSettings
from hub.endpoints import (
    ADMIN_BODY_PREFIXES,
    BY_ID_METHODS,
    BY_PATH,
    RESPONSE_BY_ID,
    Dialect,
    Endpoint,
    dialect_of,
    endpoints_of,
    needs_key,
    tasks_of,
)
from hub.errors import (
    AuthError,
    EngineTimeout,
    HubError,
    MethodNotAllowed,
    NotFound,
    RequestError,
    UpstreamError,
    WrongModelType,
)
from hub.fit import OUTPUT_KEYS, Fit
from hub.hosted import HostedAnswer, HostedPool
from hub.manager import Lease, Manager
from hub.metrics import Exchange, Metrics
from hub.upstream import (
    AnswerTimeout,
    Call,
    ConnectTimeout,
    Disconnected,
    EngineError,
    EnginePool,
    IdleTimeout,
    Response,
)
from hub.vocab import engine_error, shaped_error, stream_error

log = logging.getLogger("hub.gateway")
# Headers that describe one hop of a connection, not the message: never passed on.
HOP_HEADERS = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host", b"authorization", b"te",
               b"trailer", b"upgrade", b"proxy-authorization", b"proxy-connection"}
RESPONSE_ID = re.compile(rb'"id"\s*:\s*"([^"]{1,200})"')
SNIFF_BYTES = 65536  # how far into a Responses stream its id is looked for
REMEMBERED_RESPONSES = 10000
# What every request to an engine carries besides its content-type (engines answer uncompressed)
ENGINE_HEADERS = b"user-agent: hub\r\naccept: */*\r\naccept-encoding: identity\r\n"
ENGINE_KEEPALIVE_S = 4.0  # below the engines' own 5 s
# An error event an engine sent itself ends its stream as well as the protocol's last event does
STREAM_ERROR = re.compile(rb"^(event: ?error|data: ?\{\"error\")", re.M)
SEQUENCE = re.compile(rb'"sequence_number": ?(\d+)')
TAIL_BYTES = 64  # what of a chunk is kept to find a last event split across two chunks
# The ASGI scope extension of a request made in the hub's own process as background work (a batch line:
# hub/batches/runner.py); servers never set it, so no client can. Its model is acquired as background work.
BACKGROUND = "hub.background"


@dataclass(slots=True)
class Outgoing:
    """One request on its way to a model's engine: what the gateway read from the client, checked, and sends on."""

    model: str  # the registered id the client named
    ep: Endpoint  # the route table's entry: dialect, task, last event of a stream
    method: str
    target: str  # the engine's path and the client's query string
    raw: bytes = b""  # the body as received (JSON bodies are sent again only when the engine's model id differs)
    body: dict[str, Any] | None = None  # the parsed JSON body; None for multipart and bodiless requests
    content_type: str = ""
    stream: bool = False
    headers: dict[str, str] = field(default_factory=dict)  # the hub's own headers for the engine
    background: bool = False  # a batch line: its model is acquired as background work (hub/manager/queue.py)


def target_of(path: str, scope: Scope) -> str:
    """The engine's request target: `path` with the client's query string."""
    query = scope.get("query_string", b"")
    return path + "?" + query.decode("latin-1") if query else path


# ---- error shapes (the API boundary) ----

async def send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    """A whole JSON response over ASGI."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def send_error(send: Send, err: HubError, dialect: Dialect = "openai") -> None:
    """A HubError as a response in the client's dialect, with its status and headers."""
    await send_json(send, err.status, shaped_error(err, dialect), err.headers)


class ApiKeyMiddleware:
    """Requires the hub's API key on /v1, /hub and the table's other paths: `Authorization: Bearer <key>` (OpenAI
    clients, Claude Code's ANTHROPIC_AUTH_TOKEN) or `x-api-key: <key>` (the anthropic SDK, ANTHROPIC_API_KEY)."""

    def __init__(self, app: ASGIApp, key: str, env_name: str) -> None:
        self.app, self.key, self.env_name = app, key.encode(), env_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and needs_key(path):
            headers = Headers(scope=scope)
            given = headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else headers.get("x-api-key", "")
            if not secrets.compare_digest(token.encode(), self.key):
                why = "missing" if not (given or "x-api-key" in headers) else "wrong"
                err = AuthError(f"API key {why}: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>') with the "
                                f"key in ${self.env_name}")
                await send_error(send, err, dialect_of(path))
                return
        await self.app(scope, receive, send)


class ResponseBook:
    """Which model made each response the hub relayed (bounded: the oldest are forgotten first)."""

    def __init__(self, size: int = REMEMBERED_RESPONSES) -> None:
        self.size, self.ids = size, OrderedDict[str, str]()

    def remember(self, response_id: str, model: str) -> None:
        self.ids[response_id] = model
        self.ids.move_to_end(response_id)
        while len(self.ids) > self.size:
            self.ids.popitem(last=False)

    def model_of(self, response_id: str) -> str | None:
        return self.ids.get(response_id)

    def forget(self, response_id: str) -> None:
        self.ids.pop(response_id, None)


def base_url(scope: Scope) -> str:
    """The URL the client called the hub at (for links the client follows back, such as image files)."""
    host = Headers(scope=scope).get("host")
    if not host:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"


class Gateway:
    """Serves the route table; passes every other request to `app`."""

    def __init__(self, manager: Manager, app: ASGIApp | None = None, metrics: Metrics | None = None) -> None:
        self.manager, self.app, self.metrics = manager, app, metrics
        hub = manager.registry.hub
        self.limit_bodies(hub)
        self.responses = ResponseBook()
        # Pooled connections to the engines (hub/upstream.py). An idle one is dropped before the engines' servers
        # drop it (uvicorn's and vLLM's keep-alive: 5 s).
        self.engines = EnginePool(keepalive_s=ENGINE_KEEPALIVE_S, connect_timeout_s=hub.connect_timeout,
                                  max_connections=hub.max_engine_connections)
        # Servers the hub does not manage (the openai engine: hosted APIs) go through httpx: HTTP/2, proxies
        self.hosted = HostedPool(hub.connect_timeout, hub.max_engine_connections)
        self.fit = Fit(self.engines)  # output limits clamped to the model's context (hub/fit.py)

    def limit_bodies(self, hub: HubSettings) -> None:
        """Take [hub]'s limits on what a client may send (at the start, and at each registry reload)."""
        self.json_limit = BodyLimit(hub.max_body_mb, "max_body_mb", "JSON bodies")
        self.upload_limit = BodyLimit(hub.max_upload_mb, "max_upload_mb", "multipart uploads")
        self.max_depth = hub.max_json_depth

    def wrap(self, app: ASGIApp) -> Gateway:
        """Put this gateway in front of `app`, which gets every request the gateway does not serve."""
        self.app = app
        return self

    async def close(self) -> None:
        """Close the pooled connections."""
        await self.engines.close()
        await self.hosted.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        ep = BY_PATH.get(path)
        by_id = None if ep or not path.startswith("/v1/responses/") else RESPONSE_BY_ID.match(path)
        if ep is None and by_id is None:
            if path.startswith(ADMIN_BODY_PREFIXES) and scope["method"] in ("POST", "PUT", "PATCH"):
                try:
                    receive = await self.admin_body(scope, receive)
                except HubError as err:
                    await send_error(send, err)
                    return
                except ClientGone:
                    return
            await self.app(scope, receive, send)
            return
        dialect = ep.dialect if ep else "openai"
        method = scope["method"]
        allowed = [ep.method] if ep else list(BY_ID_METHODS[by_id.group(2) or ""])
        x = Exchange(path if ep else "/v1/responses/{id}" + (by_id.group(2) or ""))
        send = x.wrap(send)
        try:
            if method not in allowed:
                raise MethodNotAllowed(method, path, allowed)
            if ep:
                await self.serve(scope, receive, send, ep, x)
            else:
                await self.serve_by_id(scope, receive, send, by_id.group(1), x)
        except HubError as err:
            await send_error(send, err, dialect)
        except ClientGone:
            x.status = 499  # nginx's "client closed request"
        except StreamCut:
            raise  # uvicorn closes the connection mid-body (logged above, without a traceback of ours)
        except Exception:  # a bug: logged with its traceback, answered in the client's dialect if nothing was sent
            log.exception("%s %s failed", method, path)
            if x.status is not None:
                raise
            await send_error(send, HubError(f"the hub failed on {method} {path}: an internal error, logged with its "
                                            "traceback in the hub's log (please report it)"), dialect)
        finally:
            if self.metrics:
                self.metrics.done(x)

    # ---- the two ways in ----

    async def serve(self, scope: Scope, receive: Receive, send: Send, ep: Endpoint, x: Exchange) -> None:
        """A request that names its model in its body."""
        headers = Headers(scope=scope)
        limit = self.upload_limit if ep.body == "multipart" else self.json_limit
        limit.check_length(headers)
        raw = await read_body(receive, limit)
        content_type = headers.get("content-type", "")
        if ep.body == "multipart":
            model, stream = await self.read_form(scope, raw, content_type, ep)
            body = None
        else:
            body = json_object(raw, self.max_depth)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise RequestError(f"missing required parameter 'model' (the id of a registered model that serves "
                                   f"{ep.paths[0]}; see GET /v1/models)", param="model")
            for f in ep.required:
                value = body.get(f.name)
                if value is None:
                    raise RequestError(f"missing required parameter '{f.name}' ({f.what})", param=f.name)
                if not isinstance(value, f.types) or isinstance(value, bool):
                    raise RequestError(f"'{f.name}' must be {f.what}", param=f.name)
            stream = body.get("stream", False)
            if stream is not True and stream is not False and stream is not None:
                raise RequestError("'stream' must be true or false", param="stream")
        if model in self.manager.slots:  # a registered id only: a label per made-up id would grow without bound
            x.model = model
        slot = self.check_task(model, ep, scope["path"])
        if x.model is None and slot.id != model:  # a LoRA adapter (<id>:<name>): counted under its model
            x.model = slot.id
        if body is not None and (why := slot.engine.refusal(slot.cfg, ep.task, body)):
            raise RequestError(why)
        extra = {"x-hub-files-url": f"{base_url(scope)}/files/{model}"} if ep.files else {}
        await self.forward(receive, send, Outgoing(model, ep, ep.method, target_of(ep.upstream or scope["path"], scope),
                                                   raw, body, content_type, bool(stream), extra,
                                                   BACKGROUND in (scope.get("extensions") or ())))

    async def serve_by_id(self, scope: Scope, receive: Receive, send: Send, response_id: str, x: Exchange) -> None:
        """GET, DELETE, cancel and input_items of a response: sent to the model that made it, if still running."""
        model = self.responses.model_of(response_id)
        if model is None:
            raise NotFound(f"no response {response_id!r} was made through this hub (or it was made so long ago "
                                "that the hub forgot which model made it)", param="response_id")
        x.model = model
        slot = self.manager.slot(model)
        if not slot.handle and slot.engine.managed:
            self.responses.forget(response_id)
            raise NotFound(f"response {response_id!r} is gone: model {model!r}, which kept it in memory, "
                                "has stopped since", param="response_id")
        ep = BY_PATH["/v1/responses"]
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")  # the id as the client encoded it
        await self.forward(receive, send, Outgoing(model, ep, scope["method"], target_of(path, scope)))
        if scope["method"] == "DELETE":
            self.responses.forget(response_id)

    # ---- checks ----

    async def admin_body(self, scope: Scope, receive: Receive) -> Receive:
        """The /hub admin API's body, bounded and checked as strict JSON (finite numbers: a measured peak of
        Infinity would be kept and break every later listing); a `receive` that replays it."""
        self.json_limit.check_length(Headers(scope=scope))
        raw = await read_body(receive, self.json_limit)
        if raw.strip():
            json_object(raw, self.max_depth, finite=True)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        return replay

    async def read_form(self, scope: Scope, raw: bytes, content_type: str, ep: Endpoint) -> tuple[str, bool]:
        """`model` and `stream` of a multipart body, after checking its required fields."""
        if not content_type.startswith("multipart/form-data"):
            names = ", ".join(f.name for f in ep.required)
            raise RequestError(f"{ep.paths[0]} takes multipart/form-data with model, {names} and the other fields")

        async def replay() -> Message:
            return {"type": "http.request", "body": raw, "more_body": False}

        try:
            form = await Request(scope, replay).form()
        except Exception as err:  # python-multipart raises several types for malformed bodies
            raise RequestError(f"the multipart body cannot be parsed: {err}") from None
        try:
            model = form.get("model")
            if not isinstance(model, str) or not model:
                raise RequestError(f"missing required parameter 'model' (the id of a registered model that serves "
                                   f"{ep.paths[0]})", param="model")
            for f in ep.required:
                if f.name not in form and f"{f.name}[]" not in form:
                    raise RequestError(f"missing required parameter '{f.name}' ({f.what})", param=f.name)
            stream = form.get("stream")
            if stream is not None and (not isinstance(stream, str) or stream.lower() not in ("true", "false")):
                raise RequestError("'stream' must be true or false", param="stream")
            return model, stream is not None and stream.lower() == "true"
        finally:
            await form.close()

    def check_task(self, model: str, ep: Endpoint, path: str) -> Any:
        """The model's slot; WrongModelType naming what the model serves and which models serve `path`."""
        slot = self.manager.slot(model)
        if ep.task in tasks_of(slot.cfg.type, slot.cfg.tasks):
            return slot
        serves = endpoints_of(slot.cfg.type, slot.cfg.tasks)
        others = [s.id for s in self.manager.slots.values()
                  if ep.task in tasks_of(s.cfg.type, s.cfg.tasks) and not s.removed]
        article = "an" if slot.cfg.type[0] in "aeiou" else "a"
        where = (f"registered models that serve it: {', '.join(others)}" if others
                 else "no registered model serves it")
        raise WrongModelType(f"model {model!r} is {article} {slot.cfg.type} model: use {' or '.join(serves)} "
                             f"(it does not serve {path}; {where})", param="model")

    # ---- forwarding ----

    async def forward(self, receive: Receive, send: Send, req: Outgoing) -> None:
        """Acquire the model, send the request to its engine, and pass the answer (or
        stream) back. One watcher follows the client from the queue to the last byte: a client that leaves frees its
        queue place, drops the engine's request (vLLM aborts it, the image server cancels its job) and the lease."""
        call = Call()
        watch = Watch(receive, call.close)
        try:
            lease = await self.manager.acquire(req.model, abandoned=watch.wait, background=req.background)
            try:
                await self._exchange(send, lease, req, call, watch.gone)
            finally:
                lease.release()
        finally:
            watch.stop()

    async def _exchange(self, send: Send, lease: Lease, req: Outgoing, call: Call, gone: asyncio.Event) -> None:
        """The request to the engine and its answer, with the lease held."""
        up, limits, ep, model = lease.upstream, lease.slot.limits, req.ep, req.model
        raw, body, clamped = req.raw, req.body, None
        named = up.model or lease.slot.id  # what the engine calls the model
        if model != lease.slot.id:  # a LoRA adapter, <id>:<name>: the engine serves it as <its name>:<name>
            named = f"{named}:{model[len(lease.slot.id) + 1:]}"
        if body is not None and named != model:
            body = {**body, "model": named}
            raw = json.dumps(body).encode()
        if body is not None and ep.paths[0] in OUTPUT_KEYS and limits.fit_max_tokens and lease.slot.engine.managed:
            context = lease.slot.engine.context_length(lease.slot.cfg)
            engine = f"{up.base_url}#{lease.slot.starts}"  # one engine start: a later one may reuse the port
            if self.fit.may_clamp(ep.paths[0], body, raw, engine, context):
                fitted = await self.fit.fit(ep.paths[0], body, raw, up.base_url, engine, up.model or model, context)
                if fitted is not None:
                    raw, clamped = fitted.body, fitted.note
        headers = ENGINE_HEADERS
        if req.content_type:
            headers += b"content-type: " + req.content_type.encode("latin-1") + b"\r\n"
        if up.api_key:
            headers += b"authorization: Bearer " + up.api_key.encode("latin-1") + b"\r\n"
        for k, v in req.headers.items():
            headers += k.encode() + b": " + v.encode("latin-1") + b"\r\n"
        idle = limits.stream_idle_timeout or None
        pool = self.engines if lease.slot.engine.managed else self.hosted
        try:
            resp = await pool.request(req.method, up.base_url, req.target, headers, raw, limits.answer_timeout or None,
                                      call)
        except EngineError as err:
            raise engine_failure(lease, err, gone) from None
        out = [(k, v) for k, v in resp.headers if k not in HOP_HEADERS]
        if clamped:
            out.append((b"x-hub-max-tokens-clamped", clamped.encode()))
        if req.stream and resp.status == 200:
            await self.relay(send, resp, lease, out, ep, model, idle, gone)
            return
        try:
            data = await resp.read(idle)
        except EngineError as err:
            raise engine_failure(lease, err, gone) from None
        finally:
            resp.release()
        data, out = decoded(data, out)
        found = ep.task == "responses" and resp.status == 200 and req.method == "POST" and RESPONSE_ID.search(data)
        if found:
            self.responses.remember(found.group(1).decode(), model)
        if resp.status >= 400:
            data = engine_error(data, resp.status, ep.dialect)
            out = [(k, v) for k, v in out if k != b"content-type"] + [(b"content-type", b"application/json")]
        out.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        await send({"type": "http.response.body", "body": data})

    async def relay(self, send: Send, resp: Response | HostedAnswer, lease: Lease, headers: list[tuple[bytes, bytes]],
                    ep: Endpoint, model: str, idle: float | None, gone: asyncio.Event) -> None:
        """Pass the engine's stream on as it arrives. A stream that breaks, goes silent past stream_idle_timeout,
        or ends without its protocol's last event (whatever its framing) ends with an error event in the client's
        dialect."""
        sniff = b"" if ep.task == "responses" else None
        last = b""  # the last chunk: where a broken Responses stream's last sequence_number is read, only then
        sse = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)
        events = sse and ep.end is not None
        # the tail keeps one byte before the searched part: `^` of a pattern then matches only at a real line start
        ended, tail = not events, b"\n"
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            try:
                async for chunk in resp.chunks(idle):
                    if sniff is not None:
                        sniff += chunk
                        if m := RESPONSE_ID.search(sniff):
                            self.responses.remember(m.group(1).decode(), model)
                            sniff = None
                        elif len(sniff) > SNIFF_BYTES:
                            sniff = None
                    if not ended:  # the last event or an error event, possibly across two chunks
                        seen = tail + chunk
                        if b"error" in seen or any(h in seen for h in ep.end_hints):  # the regexes only then
                            ended = bool(ep.end.search(seen, 1) or STREAM_ERROR.search(seen, 1))  # type: ignore[union-attr]
                        tail = seen[-(TAIL_BYTES + 1):]
                    last = chunk
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if not ended:
                    raise Disconnected(f"the engine ended its stream without its last event ({ep.end_name}): the "
                                       "answer above is incomplete")
            except EngineError as err:
                if gone.is_set():
                    pass
                elif sse:
                    failure = engine_failure(lease, err, gone)
                    numbers = SEQUENCE.findall(last) if ep.task == "responses" else []
                    sequence = int(numbers[-1]) + 1 if numbers else 0
                    await send({"type": "http.response.body", "body": stream_error(failure, ep, sequence),
                                "more_body": True})
                else:  # audio or another body with no room for an error: cut the connection, never end it cleanly
                    log.warning("model %r: its stream broke off (%s): the client's connection is cut", model, err)
                    raise StreamCut(str(err)) from None
            await send({"type": "http.response.body", "body": b""})
        finally:
            resp.release()


class StreamCut(Exception):
    """A stream that is not SSE broke off after its head was sent: the server cuts the client's connection, so that
    the client sees an incomplete body and not a whole one."""


def engine_failure(lease: Lease, err: EngineError, gone: asyncio.Event) -> HubError | ClientGone:
    """What a failed exchange with the engine means to the client: its own leaving (ClientGone), a timeout naming
    its key (504), or the engine breaking off (502)."""
    if gone.is_set():
        return ClientGone()
    s = lease.slot
    if isinstance(err, ConnectTimeout):
        return EngineTimeout(f"model {s.id!r}: {err} (connect_timeout in [hub] of the registry); see `hub logs {s.id}`")
    if isinstance(err, AnswerTimeout):
        return EngineTimeout(f"model {s.id!r}: {err} (answer_timeout; raise it in [hub] or [models.{s.id}] of the "
                             f"registry if the model needs longer); see `hub logs {s.id}`")
    if isinstance(err, IdleTimeout):
        return EngineTimeout(f"model {s.id!r}: {err} (stream_idle_timeout; raise it in [hub] or [models.{s.id}] of "
                             f"the registry if the model needs longer); see `hub logs {s.id}`")
    return upstream_error(lease, err)


def upstream_error(lease: Lease, err: Exception) -> UpstreamError:
    """The error a client gets when the engine broke off its request."""
    s = lease.slot
    detail = f" ({s.reason})" if s.reason else ""
    return UpstreamError(
        f"model {s.id!r}: the engine broke off the request: {type(err).__name__}: {err or 'no detail'}{detail}; "
        f"see `hub logs {s.id}`"
    )
