"""The image server's HTTP side: the FastAPI app behind the OpenAI Images API.

Routes: POST /v1/images/generations (JSON), POST /v1/images/edits (multipart, as the openai SDK sends it: `image`,
or `image[]` repeated for several, and an optional `mask`), both streamed as server-sent events with `stream: true`
(imageserver/streaming.py); GET /health (200 once the pipeline is loaded), GET /v1/models (with the model's defaults
and limits), GET /memory (peak memory of the requests), GET /stats (requests, batches, pipeline calls and the calls
stopped part-way), GET /files/{name} (images made with response_format=url).

Sleep (the hub's sleep tier): POST /sleep drops the pipeline and keeps the process, its imports and the model's path
(GET /health answers 200 "sleeping": the server is alive; image requests get 503); POST /wake loads it again on the
worker thread and answers once it serves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from imageserver.api import (
    MAX_PARTIAL_IMAGES,
    MB,
    OUTPUT_FORMATS,
    BadRequest,
    EditRequest,
    GenerationRequest,
    LoraSpec,
    ServerOptions,
    check_n,
    check_output,
    check_prompt_chars,
    parse_size,
    pick_lora,
    resolve_steps,
    validate_request,
)
from imageserver.files import FileStore
from imageserver.images import MEDIA_TYPES, decode_image, encode_image, fit_size, mask_for_diffusers
from imageserver.jobs import Work
from imageserver.memory import Memory
from imageserver.pipelines import Pipelines
from imageserver.rules import MAPPED, check_call_args, route_guidance
from imageserver.streaming import failure, stream_job
from imageserver.worker import Worker

# The sizes OpenAI's schema lets an answer name (its ImagesResponse `size` enum); others go in x-image-size only
OPENAI_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})

log = logging.getLogger("imageserver")

DEFAULT_STRENGTH = 0.8
FILE_FIELDS = ("image", "image[]", "mask")


def error_response(status: int, message: str, type_: str, code: str | None, param: str | None = None) -> JSONResponse:
    """An OpenAI-shaped error."""
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


def create_app(source: str, served_name: str, opts: ServerOptions, pipes: Pipelines | None = None,
               on_load_failure: Callable[[str], None] | None = None, revision: str | None = None,
               loras: dict[str, LoraSpec] | None = None) -> FastAPI:
    """The image server's ASGI app; the worker starts loading the pipeline when the app starts. `revision`: of a
    hub repo source; `loras`: the LoRA adapters to load beside it, by name."""
    loras = loras or {}
    pipes = pipes or Pipelines(source, opts, revision, loras)
    memory = Memory()
    files = FileStore(opts.files_ttl, opts.files_max)
    worker = Worker(pipes, memory, on_load_failure or (lambda reason: None), opts.max_batch, opts.batch_wait)
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

    async def check_prompts(req: GenerationRequest | EditRequest) -> int:
        """The prompts' limits checked; the prompt's token count (for `usage`)."""
        check_prompt_chars(req, opts.max_prompt_chars)
        counts = {}
        for param in ("prompt", "negative_prompt"):
            if (text := getattr(req, param)) is not None:
                counts[param] = await asyncio.to_thread(pipes.check_prompt_tokens, text, param)
        return counts.get("prompt", 0)

    def call_args(req: GenerationRequest | EditRequest, task: str, param: str) -> dict[str, Any]:
        """The arguments the request sets for the pipeline that runs `task`, checked against its __call__: BadRequest
        for one it does not take (or when the model cannot do the task), before the request queues."""
        name, params = pipes.call_params(task, param)
        asked = {k: v for k in MAPPED if (v := getattr(req, k, None)) is not None}
        args = check_call_args(asked | req.call_args, params, name, type(req).model_fields)
        pipes.check_bounds(args, name)
        return route_guidance(args, pipes.guidance_target(task), name)

    def make_work(req: GenerationRequest | EditRequest, task: str, param: str, w: int, h: int, steps: int,
                  args: dict[str, Any], **extra: Any) -> Work:
        """The work of a request; `args` from call_args. The server's own choices (size and the max_area that FLUX
        Kontext derives its size from, steps, the options' default_guidance where the pipeline's guidance goes, the
        default strength) go along and are left out of a call whose pipeline does not take them; the request's own
        were checked. True CFG (FLUX.1, Qwen-Image) runs only with a negative prompt: a true_cfg_scale above 1 with
        none gets an empty one (" "), or the scale would be dropped silently."""
        shared = {"width": w, "height": h, "max_area": w * h, "num_inference_steps": steps}
        if (to := pipes.guidance_target(task)[0]) is not None:
            shared[to] = opts.default_guidance
        if "strength" in extra:
            shared["strength"] = extra.pop("strength")
        shared |= {k: v for k, v in args.items() if k != "negative_prompt"}
        negative, cfg = req.negative_prompt, shared.get("true_cfg_scale")
        if cfg is None and to == "true_cfg_scale":
            cfg = pipes.default_guidance()  # the scale in effect: Qwen-Image's cards run true CFG at its default 4
        if negative is None and (cfg or 0) > 1:
            negative = " "  # the empty negative prompt of the model cards
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        return Work(task, param, shared, req.prompt, negative, req.n, seed,
                    partial_images=(req.partial_images or 0) if req.stream else 0,
                    lora=pick_lora(req, served_name, loras), **extra)

    async def answer(request: Request, req: GenerationRequest | EditRequest, work: Work, kind: str, quality: str,
                     tokens: int) -> Response:
        """Run the work; the images as JSON, or as a stream of events. The answer stays inside OpenAI's schema
        (tests/test_schema.py): a size outside its enum is left out of the JSON answer and is "auto" in the events,
        whose schema requires the field; the real size is in the x-image-size header either way."""
        w, h = work.shared["width"], work.shared["height"]
        fmt = check_output(req)
        size = f"{w}x{h}"
        sized = {"x-image-size": size}
        # OpenAI's usage counts tokens; a diffusion pipeline reads the prompt's tokens and makes no output tokens
        usage = {"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens,
                 "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0}}

        def finish(images: list[Any]) -> list[bytes]:
            return [encode_image(im.resize((w, h)) if im.size != (w, h) else im, fmt, req.output_compression)
                    for im in images]

        if req.stream:
            job = worker.submit(work, stream=True)
            meta = {"size": size if size in OPENAI_SIZES else "auto", "quality": quality, "background": "opaque",
                    "output_format": fmt}
            events = stream_job(job, kind, (w, h), meta, usage, finish, req.output_compression,
                                opts.request_timeout, request.is_disconnected)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", "x-accel-buffering": "no", **sized})
        try:
            images, peak = await worker.call(work, opts.request_timeout, request.is_disconnected)
        except BadRequest:
            raise
        except Exception as err:
            status, error = failure(err, opts.request_timeout)
            return JSONResponse({"error": error}, status)
        blobs = await asyncio.to_thread(finish, images)
        if req.response_format == "url":
            base = request.headers.get("x-hub-files-url") or (str(request.base_url) + "files")
            data = [{"url": f"{base.rstrip('/')}/{files.put(blob, fmt)}"} for blob in blobs]
        else:
            data = [{"b64_json": base64.b64encode(blob).decode()} for blob in blobs]
        body = {"created": int(time.time()), "data": data, "output_format": fmt, "background": "opaque",
                "usage": usage}
        if size in OPENAI_SIZES:
            body["size"] = size
        if quality != "auto":
            body["quality"] = quality
        return JSONResponse(body, headers={"x-peak-memory-mb": f"{peak:.1f}", **sized})

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
        ready = worker.ready.is_set()
        counter = pipes.token_counter if ready else None
        entry = {
            "id": served_name, "object": "model", "created": created, "owned_by": "diffusers", "root": source,
            "default_size": opts.default_size, "default_steps": opts.default_steps, "max_size": opts.max_size,
            "max_n": opts.max_n,
            "default_guidance": opts.default_guidance if opts.default_guidance is not None or not ready
            else pipes.default_guidance(),
            "quality_steps": opts.quality_steps.model_dump(),
            "output_formats": list(OUTPUT_FORMATS), "backgrounds": ["opaque", "auto"],
            "max_partial_images": MAX_PARTIAL_IMAGES if (pipes.previewer is not None or not ready) else 0,
            "previews": getattr(pipes.previewer, "kind", None),
            "max_batch": opts.max_batch, "max_input_images": pipes.max_input_images(),
            "multi_image": pipes.max_input_images() > 1, "max_prompt_chars": opts.max_prompt_chars,
            "max_prompt_tokens": counter[1] if counter else (opts.max_prompt_tokens or None),
            "max_input_pixels": opts.max_input_pixels, "max_upload_mb": opts.max_upload_mb,
            "pipeline": type(pipes.base).__name__ if ready else opts.pipeline, "ready": ready,
            "loras": [{"name": n, "scale": spec.scale, "source": spec.source} for n, spec in loras.items()],
        }
        return {"object": "list", "data": [entry]}

    @app.get("/memory")
    async def memory_report() -> dict[str, Any]:
        return memory.snapshot()

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {**worker.stats, "pipeline_calls": pipes.calls, "stopped_calls": pipes.stopped,
                "max_batch": opts.max_batch,
                "queued": sum(1 for j in list(worker.pending) if j is not None),
                "pipeline_s": round(pipes.call_seconds, 4), "step_callback_s": round(pipes.callback_seconds, 4),
                "lora_loads": pipes.lora_loads, "lora_switches": pipes.lora_switches,
                "lora_switch_s": round(pipes.lora_switch_seconds, 6)}

    @app.get("/files/{name}")
    async def get_file(name: str) -> Response:
        data = files.get(name)
        if data is None:
            raise StarletteHTTPException(404, f"image {name!r} is gone (images are kept {opts.files_ttl:g}s, "
                                              f"at most {opts.files_max}): generate it again")
        media = MEDIA_TYPES.get(name.rpartition(".")[2], "application/octet-stream")
        return Response(data, media_type=media, headers={"cache-control": "private, max-age=3600"})

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
        check_output(req)
        args = call_args(req, "text2image", "model")
        tokens = await check_prompts(req)
        multiple, why = pipes.size_rule()
        w, h = parse_size(req.size if req.size not in (None, "auto") else opts.default_size, opts.max_size,
                          "size" if req.size not in (None, "auto") else "default_size", multiple, why)
        steps, quality = resolve_steps(req, opts)
        return await answer(request, req, make_work(req, "text2image", "model", w, h, steps, args),
                            "image_generation", quality, tokens)

    @app.post("/v1/images/edits")
    async def edits(request: Request) -> Response:
        ensure_ready()
        req, raw = await read_edit_form(request, opts)
        check_n(req.n, opts.max_n)
        check_output(req)
        task, param = (("inpaint", "mask") if raw["mask"] else ("edit", "image") if pipes.is_instruction_edit()
                       else ("image2image", "image"))
        args = call_args(req, task, param)
        tokens = await check_prompts(req)
        images = [await asyncio.to_thread(decode_image, d, "image", opts.max_input_pixels) for d in raw["image"]]
        mask = (await asyncio.to_thread(decode_image, raw["mask"][0], "mask", opts.max_input_pixels)
                if raw["mask"] else None)
        first = images[0]
        if mask is not None and mask.size != first.size:
            raise BadRequest(f"the mask is {mask.size[0]}x{mask.size[1]} but the image is "
                             f"{first.size[0]}x{first.size[1]}: they must be the same size", "mask")
        multiple, why = pipes.size_rule()
        if req.size not in (None, "auto"):
            w, h = parse_size(req.size, opts.max_size, "size", multiple, why)
        else:
            w, h = fit_size(*first.size, opts.max_size, multiple)
        images = [im.convert("RGB").resize((w, h)) if im.size != (w, h) else im.convert("RGB") for im in images]
        steps, quality = resolve_steps(req, opts)
        strength = req.strength if req.strength is not None else DEFAULT_STRENGTH
        if task == "inpaint":
            work = make_work(req, task, param, w, h, steps, args, image=images[0],
                             mask=mask_for_diffusers(mask).resize((w, h)), strength=strength)
        elif task == "edit":
            most = pipes.max_input_images()
            if len(images) > most:
                raise BadRequest(f"this model ({type(pipes.base).__name__}) takes at most {most} input image"
                                 f"{'s' if most > 1 else ''} (max_input_images); {len(images)} were sent", "image")
            pipes.check_input_images(images)
            work = make_work(req, task, param, w, h, steps, args, image=images if len(images) > 1 else images[0])
        else:
            work = make_work(req, task, param, w, h, steps, args, image=images[0], strength=strength)
        if work.task != "edit":
            if len(images) > 1:
                raise BadRequest(f"this model edits one image at a time; {len(images)} were sent", "image")
            if int(steps * strength) < 1:
                raise BadRequest(f"strength {strength:g} x num_inference_steps {steps} leaves no denoising step: "
                                 "raise either", "strength")
        return await answer(request, req, work, "image_edit", quality, tokens)

    return app


async def read_edit_form(request: Request, opts: ServerOptions) -> tuple[EditRequest, dict[str, list[bytes]]]:
    """The fields and the uploaded bytes (image, mask) of an edit's multipart body, within max_upload_mb."""
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
    return req, raw
