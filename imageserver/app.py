"""The image server's HTTP side: the FastAPI app behind the OpenAI Images API.

Routes: POST /v1/images/generations (JSON), POST /v1/images/edits (multipart, as the openai SDK sends it: `image`,
or `image[]` repeated for several, and an optional `mask`), GET /health (200 once the pipeline is loaded),
GET /v1/models, GET /memory (peak memory of the requests), GET /files/{name} (images made with response_format=url).

Sleep (the hub's sleep tier): POST /sleep drops the pipeline and keeps the process, its imports and the model's path
(GET /health answers 200 "sleeping": the server is alive; image requests get 503); POST /wake loads it again on the
worker thread and answers once it serves.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from imageserver.api import (
    MB,
    BadRequest,
    EditRequest,
    GenerationRequest,
    ServerOptions,
    check_n,
    parse_size,
    validate_request,
)
from imageserver.files import FileStore
from imageserver.images import decode_image, encode_png, fit_size, mask_for_diffusers
from imageserver.pipelines import Memory, Pipelines
from imageserver.worker import ClientGone, Job, JobCancelled, RequestTimeout, Worker

log = logging.getLogger("imageserver")

DEFAULT_STRENGTH = 0.8
FILE_FIELDS = ("image", "image[]", "mask")


def error_response(status: int, message: str, type_: str, code: str | None, param: str | None = None) -> JSONResponse:
    """An OpenAI-shaped error."""
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


def create_app(source: str, served_name: str, opts: ServerOptions, pipes: Pipelines | None = None,
               on_load_failure: Callable[[str], None] | None = None) -> FastAPI:
    """The image server's ASGI app; the worker starts loading the pipeline when the app starts."""
    pipes = pipes or Pipelines(source, opts)
    memory = Memory()
    files = FileStore(opts.files_ttl, opts.files_max)
    worker = Worker(pipes, memory, on_load_failure or (lambda reason: None))
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title=f"diffusers: {served_name}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.worker = worker

    @app.exception_handler(BadRequest)
    async def on_bad_request(request: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse(err.body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        return error_response(err.status_code, f"{request.method} {request.url.path}: {err.detail}", kind,
                              str(err.status_code))

    def ensure_ready() -> None:
        if worker.asleep:
            raise StarletteHTTPException(503, "the model is asleep: POST /wake first (the hub wakes it for you)")
        if not worker.ready.is_set():
            raise StarletteHTTPException(503, "the pipeline is still loading: retry when GET /health answers 200")

    async def answer(request: Request, fn: Callable[[Job], Any], response_format: str | None) -> Response:
        try:
            pngs, peak = await worker.call(fn, opts.request_timeout, request.is_disconnected)
        except BadRequest:
            raise
        except RequestTimeout:
            return error_response(504, f"the request took longer than request_timeout ({opts.request_timeout:g}s, "
                                  "queue included): ask for fewer steps, a smaller size or fewer images, or raise "
                                  "args.request_timeout", "server_error", "timeout")
        except ClientGone:
            return error_response(499, "the client went away", "server_error", "client_closed")
        except JobCancelled:
            return error_response(504, "the request was cancelled", "server_error", "cancelled")
        except Exception as err:
            log.exception("pipeline call failed")
            return error_response(500, f"the pipeline failed: {type(err).__name__}: {err}", "server_error",
                                  "pipeline_error")
        if response_format == "url":
            base = request.headers.get("x-hub-files-url") or (str(request.base_url) + "files")
            data = [{"url": f"{base.rstrip('/')}/{files.put(png)}"} for png in pngs]
        else:
            data = [{"b64_json": base64.b64encode(png).decode()} for png in pngs]
        body = {"created": int(time.time()), "data": data, "output_format": "png"}
        return JSONResponse(body, headers={"x-peak-memory-mb": f"{peak:.1f}"})

    def common_kwargs(req: GenerationRequest | EditRequest) -> dict[str, Any]:
        return {"prompt": req.prompt, "negative_prompt": req.negative_prompt,
                "num_inference_steps": req.num_inference_steps or opts.default_steps,
                "guidance_scale": req.guidance_scale}

    @app.get("/health")
    async def health() -> JSONResponse:
        if worker.ready.is_set():
            return JSONResponse({"status": "ok"})
        if worker.asleep:  # alive: the hub must not take a sleeping server for a dead one
            return JSONResponse({"status": "sleeping"})
        return JSONResponse({"status": "loading"}, 503)

    @app.post("/sleep")
    async def sleep() -> JSONResponse:
        await worker.sleep()
        return JSONResponse({"status": "sleeping" if worker.asleep else "loading"})

    @app.post("/wake")
    async def wake() -> JSONResponse:
        try:
            await worker.wake()
        except Exception as err:
            log.exception("loading the pipeline again failed")
            return error_response(500, f"the pipeline could not be loaded again: {type(err).__name__}: {err}",
                                  "server_error", "wake_failed")
        return JSONResponse({"status": "ok" if worker.ready.is_set() else "loading"})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "created": created,
                                            "owned_by": "diffusers", "root": source}]}

    @app.get("/memory")
    async def memory_report() -> dict[str, Any]:
        return memory.snapshot()

    @app.get("/files/{name}")
    async def get_file(name: str) -> Response:
        png = files.get(name)
        if png is None:
            raise StarletteHTTPException(404, f"image {name!r} is gone (images are kept {opts.files_ttl:g}s, "
                                              f"at most {opts.files_max}): generate it again")
        return Response(png, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> Response:
        ensure_ready()
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRequest(f"the request body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        req = validate_request(GenerationRequest, body)
        check_n(req.n, opts.max_n)
        w, h = parse_size(req.size if req.size not in (None, "auto") else opts.default_size, opts.max_size)
        kwargs = {**common_kwargs(req), "width": w, "height": h}

        def job(j: Job) -> list[bytes]:
            pipe = pipes.get("text2image", "model")  # derived on the worker thread, never beside a running call
            return [encode_png(im) for im in pipes.run(pipe, kwargs, req.n, req.seed, j)]

        return await answer(request, job, req.response_format)

    @app.post("/v1/images/edits")
    async def edits(request: Request) -> Response:
        ensure_ready()
        limit = int(opts.max_upload_mb * MB)
        too_big = BadRequest(f"the upload is larger than {opts.max_upload_mb:g} MB (images and mask together): "
                             "send smaller images", "image")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadRequest("/v1/images/edits takes multipart/form-data with image, prompt (and mask) fields")
        with contextlib.suppress(ValueError):
            if int(request.headers.get("content-length", "0")) > limit:
                raise too_big
        try:
            form = await request.form(max_files=32, max_fields=64)
        except Exception as err:
            raise BadRequest(f"the multipart body cannot be parsed: {err}") from None
        try:
            fields: dict[str, Any] = {}
            uploads: dict[str, list[UploadFile]] = {"image": [], "mask": []}
            for key, value in form.multi_items():
                if key in FILE_FIELDS:
                    param = "mask" if key == "mask" else "image"
                    if not isinstance(value, UploadFile):
                        raise BadRequest(f"'{param}' must be a file upload, not a text field", param)
                    uploads[param].append(value)
                elif isinstance(value, UploadFile):
                    raise BadRequest(f"unknown file parameter '{key}' (this server takes image and mask)", key)
                else:
                    fields[key] = value
            req = validate_request(EditRequest, fields)
            if not uploads["image"]:
                raise BadRequest("missing required parameter 'image' (one or more image files)", "image")
            if len(uploads["mask"]) > 1:
                raise BadRequest("send at most one 'mask'", "mask")
            total = 0
            raw: dict[str, list[bytes]] = {"image": [], "mask": []}
            for param, ups in uploads.items():
                for up in ups:
                    data = await up.read()
                    total += len(data)
                    if total > limit:
                        raise too_big
                    raw[param].append(data)
        finally:
            await form.close()
        check_n(req.n, opts.max_n)
        images = [decode_image(d, "image") for d in raw["image"]]
        mask = decode_image(raw["mask"][0], "mask") if raw["mask"] else None
        first = images[0]
        if mask is not None and mask.size != first.size:
            raise BadRequest(f"the mask is {mask.size[0]}x{mask.size[1]} but the image is "
                             f"{first.size[0]}x{first.size[1]}: they must be the same size", "mask")
        if req.size not in (None, "auto"):
            w, h = parse_size(req.size, opts.max_size)
        else:
            w, h = fit_size(*first.size, opts.max_size)
        images = [im.convert("RGB").resize((w, h)) if im.size != (w, h) else im.convert("RGB") for im in images]
        steps = req.num_inference_steps or opts.default_steps
        strength = req.strength if req.strength is not None else DEFAULT_STRENGTH
        kwargs = {**common_kwargs(req), "width": w, "height": h}
        if mask is not None:
            task, param = "inpaint", "mask"
            kwargs |= {"image": images[0], "mask_image": mask_for_diffusers(mask).resize((w, h)), "strength": strength}
        elif pipes.is_instruction_edit():
            task, param = "edit", "image"
            kwargs |= {"image": images if len(images) > 1 else images[0]}
        else:
            task, param = "image2image", "image"
            kwargs |= {"image": images[0], "strength": strength}
        if "strength" in kwargs:
            if len(images) > 1:
                raise BadRequest(f"this model edits one image at a time; {len(images)} were sent", "image")
            if int(steps * strength) < 1:
                raise BadRequest(f"strength {strength:g} x num_inference_steps {steps} leaves no denoising step: "
                                 "raise either", "strength")

        def job(j: Job) -> list[bytes]:
            pipe = pipes.get(task, param)
            return [encode_png(im.resize((w, h)) if im.size != (w, h) else im)
                    for im in pipes.run(pipe, kwargs, req.n, req.seed, j)]

        return await answer(request, job, req.response_format)

    return app
