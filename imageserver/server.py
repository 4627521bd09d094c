"""The image server: one Diffusers pipeline behind the OpenAI Images API. Runs inside the diffusers environment.

    python -m imageserver --model SRC --served-model-name ID --port P [--host H] [--options JSON]

Routes: POST /v1/images/generations (JSON), POST /v1/images/edits (multipart, as the openai SDK sends it: `image`,
or `image[]` repeated for several, and an optional `mask`), GET /health (200 once the pipeline is loaded),
GET /v1/models, GET /memory (peak memory of the requests), GET /files/{name} (images made with response_format=url).

Rules that are not obvious:
- One pipeline call at a time: requests queue in arrival order for one worker thread (which also loads the model).
  A request waits at most `request_timeout` (queue time included) and then gets 504; a request whose client went
  away, or that timed out, is skipped if still queued and interrupted at its next denoising step if running.
- Tasks share one set of weights: the loaded pipeline is the text-to-image one; image-to-image (edits without a
  mask) and inpainting (edits with a mask) are derived from it with AutoPipelineFor*.from_pipe. Instruction-editing
  pipelines (Qwen-Image-Edit, FLUX Kontext; name them in `pipeline`) serve edits themselves.
- Masks follow OpenAI: fully transparent pixels are the ones to repaint. A mask without an alpha channel is read as
  Diffusers reads it: white is repainted.
- Peak memory per request: torch.cuda.max_memory_allocated (reset per job) on CUDA, the process's RSS (sampled
  while the job runs) on CPU; sent as the `x-peak-memory-mb` header and summed up at GET /memory.
This module must not import the `hub` package: the engine environment does not have the hub's dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import inspect
import io
import json
import logging
import queue
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psutil
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import ValidationError
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

log = logging.getLogger("diffusers_server")

# Pipelines (class-name prefixes) that edit an image by instruction rather than denoising it from a noised copy.
INSTRUCTION_EDIT = ("QwenImageEdit", "FluxKontext")
DEFAULT_STRENGTH = 0.8
FILE_FIELDS = ("image", "image[]", "mask")


class JobCancelled(Exception):
    """Raised inside a pipeline call whose request timed out or whose client went away."""


def error_response(status: int, message: str, type_: str, code: str | None, param: str | None = None) -> JSONResponse:
    """An OpenAI-shaped error."""
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


# ---------------------------------------------------------------------------------------------------------------
# pipelines


def resolve_device(name: str, torch: Any) -> str:
    """The torch device for an options `device`: "auto" is CUDA when present, else CPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but torch sees no CUDA device: set device = \"cpu\"")
    return name


def resolve_dtype(name: str, device: str, torch: Any) -> Any:
    """The torch dtype for an options `dtype`: "auto" is bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


class Pipelines:
    """The loaded pipeline and the ones derived from it (sharing its weights), placed on one device."""

    TASKS: ClassVar[dict[str, str]] = {"text2image": "AutoPipelineForText2Image",
                                       "image2image": "AutoPipelineForImage2Image",
                                       "inpaint": "AutoPipelineForInpainting"}

    def __init__(self, source: str, opts: ServerOptions) -> None:
        self.source = source
        self.opts = opts
        self.base: Any = None
        self.device = "cpu"
        self.derived: dict[str, Any] = {}
        self.unsupported: dict[str, str] = {}
        self._offloaded: Any = None  # the pipeline whose offload hooks are installed

    def load(self) -> None:
        """Load the pipeline from a local folder or a hub repo id and apply every option."""
        import diffusers
        import torch

        o = self.opts
        if o.cpu_threads:
            torch.set_num_threads(o.cpu_threads)
        self.device = resolve_device(o.device, torch)
        dtype = resolve_dtype(o.dtype, self.device, torch)
        cls = diffusers.DiffusionPipeline
        if o.pipeline:
            cls = getattr(diffusers, o.pipeline, None)
            if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
                raise RuntimeError(f"args.pipeline: {o.pipeline!r} is not a Diffusers pipeline class of diffusers "
                                   f"{diffusers.__version__} (e.g. StableDiffusionXLPipeline, QwenImageEditPipeline)")
        log.info("loading %s as %s (%s, %s)", self.source, cls.__name__, self.device, dtype)
        diffusers.utils.logging.disable_progress_bar()
        pipe = cls.from_pretrained(self.source, dtype=dtype)
        if o.scheduler:
            sched = getattr(diffusers, o.scheduler, None)
            if not (isinstance(sched, type) and issubclass(sched, diffusers.SchedulerMixin)):
                raise RuntimeError(f"args.scheduler: {o.scheduler!r} is not a Diffusers scheduler class "
                                   "(e.g. EulerDiscreteScheduler, DPMSolverMultistepScheduler)")
            pipe.scheduler = sched.from_config(pipe.scheduler.config)
        vae = getattr(pipe, "vae", None)
        if o.vae_tiling or o.vae_slicing:
            if vae is None:
                log.warning("vae_tiling/vae_slicing: this pipeline has no vae; ignored")
            else:
                if o.vae_tiling:
                    vae.enable_tiling()
                if o.vae_slicing:
                    vae.enable_slicing()
        if o.attention_slicing:
            pipe.enable_attention_slicing()
        if o.compile:
            for name in ("transformer", "unet"):
                if (module := getattr(pipe, name, None)) is not None:
                    module.compile()  # in place: pipelines derived with from_pipe share the compiled module
        if o.cpu_offload != "none" and not self.device.startswith("cuda"):
            log.warning("cpu_offload=%s needs a CUDA device; running on %s without offload", o.cpu_offload, self.device)
        pipe.set_progress_bar_config(disable=True)
        self.base = pipe
        self._place(pipe)

    @property
    def offload(self) -> bool:
        """Whether weights live on the CPU and move to the GPU per component."""
        return self.opts.cpu_offload != "none" and self.device.startswith("cuda")

    def _place(self, pipe: Any) -> None:
        if not self.offload:
            pipe.to(self.device)
        elif self._offloaded is not pipe:  # hooks sit on the shared modules: install the running pipeline's own
            if self.opts.cpu_offload == "model":
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.enable_sequential_cpu_offload(device=self.device)
            self._offloaded = pipe

    def is_instruction_edit(self) -> bool:
        """Whether the loaded pipeline edits images by instruction (edits go to it as is)."""
        return type(self.base).__name__.startswith(INSTRUCTION_EDIT)

    def get(self, task: str, param: str) -> Any:
        """The pipeline for `task` (text2image, image2image, inpaint, edit), derived once; BadRequest if none fits."""
        if task == "edit":
            return self.base
        if task in self.derived:
            return self.derived[task]
        if task not in self.unsupported:
            import diffusers

            auto = getattr(diffusers, self.TASKS[task])
            try:
                pipe = auto.from_pipe(self.base)
                pipe.set_progress_bar_config(disable=True)
                self.derived[task] = pipe
                return pipe
            except (ValueError, TypeError, KeyError, AttributeError) as err:
                self.unsupported[task] = str(err)
        what = {"text2image": "generate from text alone", "image2image": "edit an image without a mask",
                "inpaint": "inpaint with a mask"}[task]
        raise BadRequest(f"this model ({type(self.base).__name__}) cannot {what}: {self.unsupported[task]}", param)

    def run(self, pipe: Any, kwargs: dict[str, Any], n: int, seed: int | None, job: Job) -> list[Any]:
        """Call `pipe` with the keyword arguments it takes; n images; stop at the next step if the job is cancelled."""
        import torch

        self._place(pipe)
        params = inspect.signature(type(pipe).__call__).parameters
        call = {k: v for k, v in kwargs.items() if v is not None and k in params}
        dropped = sorted(k for k, v in kwargs.items() if v is not None and k not in params)
        if dropped:
            log.info("%s takes no %s: ignored", type(pipe).__name__, ", ".join(dropped))
        if "callback_on_step_end" in params:
            def on_step(_pipe: Any, _i: int, _t: Any, _kw: dict[str, Any]) -> dict[str, Any]:
                if job.cancelled.is_set():
                    log.info("request abandoned (timeout or client gone): stopped after step %d", _i + 1)
                    raise JobCancelled()
                return {}

            call["callback_on_step_end"] = on_step
        generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
        if generator is not None and "generator" in params:
            call["generator"] = generator
        if "num_images_per_prompt" in params:
            return list(pipe(**call, num_images_per_prompt=n).images)
        images: list[Any] = []
        for _ in range(n):
            images.extend(pipe(**call).images)
        return images[:n]


# ---------------------------------------------------------------------------------------------------------------
# queue, memory, files


@dataclass(eq=False)
class Job:
    """One pipeline call waiting for, or running on, the worker thread."""

    fn: Callable[[Job], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)


class Memory:
    """Peak memory of each job: CUDA's max allocated (reset per job) on CUDA, the process's sampled RSS on CPU."""

    def __init__(self) -> None:
        self.device = "cpu"
        self.kind = "rss"
        self.last_peak_mb: float | None = None
        self.max_peak_mb: float | None = None
        self.requests = 0
        self._proc = psutil.Process()

    def use(self, device: str) -> None:
        """Measure on `device` (a torch device string) from now on."""
        if device.startswith("cuda"):
            import torch

            index = torch.device(device).index
            self.device = f"cuda:{torch.cuda.current_device() if index is None else index}"
            self.kind = "torch_cuda_max_allocated"
        else:
            self.device, self.kind = "cpu", "rss"

    def measure(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """Run fn; its result and the peak memory in MiB while it ran."""
        if self.kind == "torch_cuda_max_allocated":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            result = fn()
            peak = torch.cuda.max_memory_allocated(self.device) / MB
        else:
            peak_bytes = self._proc.memory_info().rss
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak_bytes
                while not stop.wait(0.01):
                    peak_bytes = max(peak_bytes, self._proc.memory_info().rss)

            sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
            sampler.start()
            try:
                result = fn()
            finally:
                stop.set()
                sampler.join()
                peak_bytes = max(peak_bytes, self._proc.memory_info().rss)
            peak = peak_bytes / MB
        self.last_peak_mb = round(peak, 1)
        self.max_peak_mb = max(self.max_peak_mb or 0.0, self.last_peak_mb)
        self.requests += 1
        return result, self.last_peak_mb

    def snapshot(self) -> dict[str, Any]:
        """The GET /memory body."""
        return {"device": self.device, "kind": self.kind, "last_peak_mb": self.last_peak_mb,
                "max_peak_mb": self.max_peak_mb, "requests": self.requests}


class FileStore:
    """PNGs made with response_format=url, under unguessable names, kept for a bounded time and count."""

    def __init__(self, ttl: float, max_files: int) -> None:
        self.ttl = ttl
        self.max_files = max_files
        self._files: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        while self._files and (len(self._files) > self.max_files or next(iter(self._files.values()))[0] < now):
            self._files.popitem(last=False)

    def put(self, png: bytes) -> str:
        """Keep `png`; its name."""
        name = secrets.token_urlsafe(24) + ".png"
        with self._lock:
            now = time.monotonic()
            self._files[name] = (now + self.ttl, png)
            self._prune(now)
        return name

    def get(self, name: str) -> bytes | None:
        """The PNG of that name, or None once it is gone."""
        with self._lock:
            self._prune(time.monotonic())
            entry = self._files.get(name)
        return entry[1] if entry else None


class Worker:
    """The one thread that loads the pipeline and then runs jobs one at a time, in arrival order."""

    def __init__(self, pipes: Pipelines, memory: Memory, on_load_failure: Callable[[str], None]) -> None:
        self.pipes = pipes
        self.memory = memory
        self.on_load_failure = on_load_failure
        self.ready = threading.Event()
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._main, name="pipeline-worker", daemon=True)

    def start(self) -> None:
        """Start loading; ready is set once the pipeline serves."""
        self.thread.start()

    def stop(self) -> None:
        """Let the thread end after the job it runs."""
        self.queue.put(None)

    def submit(self, fn: Callable[[Job], Any]) -> Job:
        """Queue fn(job) to run on the worker thread; its result arrives in job.future."""
        loop = asyncio.get_running_loop()
        job = Job(fn, loop, loop.create_future())
        self.queue.put(job)
        return job

    def _main(self) -> None:
        try:
            t0 = time.monotonic()
            self.pipes.load()
            self.memory.use(self.pipes.device)
            log.info("pipeline ready in %.1fs", time.monotonic() - t0)
        except BaseException as err:  # any failure to load ends the server with the reason in its log
            log.exception("loading the pipeline failed")
            self.on_load_failure(f"{type(err).__name__}: {err}")
            return
        self.ready.set()
        while (job := self.queue.get()) is not None:
            if job.cancelled.is_set():
                self._settle(job, None, JobCancelled())
                continue
            try:
                result = self.memory.measure(lambda job=job: job.fn(job))
            except BaseException as err:
                self._settle(job, None, err)
            else:
                self._settle(job, result, None)

    @staticmethod
    def _settle(job: Job, result: Any, err: BaseException | None) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if err is not None:
                job.future.set_exception(err)
            else:
                job.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            job.loop.call_soon_threadsafe(settle)


# ---------------------------------------------------------------------------------------------------------------
# HTTP


class RequestTimeout(Exception):
    """The request waited and ran longer than request_timeout."""


class ClientGone(Exception):
    """The client disconnected before its images were ready."""


def decode_image(data: bytes, param: str) -> Image.Image:
    """An uploaded image, fully decoded; BadRequest naming `param` if it is not one."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except UnidentifiedImageError:
        raise BadRequest(f"'{param}' is not an image (send a PNG, JPEG or WebP file)", param) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadRequest(f"'{param}' is not a readable image (send a PNG, JPEG or WebP file): {err}", param) from None
    return im


def mask_for_diffusers(mask: Image.Image) -> Image.Image:
    """A grayscale mask, white where to repaint: OpenAI's transparent pixels, or the white of an opaque mask."""
    if "A" in mask.getbands():
        return ImageOps.invert(mask.getchannel("A"))
    return mask.convert("L")


def fit_size(w: int, h: int, max_size: int) -> tuple[int, int]:
    """An input image's size made valid for the pipeline: scaled into max_size, rounded down to multiples of 8."""
    scale = min(1.0, max_size / max(w, h))
    return max(8, int(w * scale) // 8 * 8), max(8, int(h * scale) // 8 * 8)


def encode_png(im: Image.Image) -> bytes:
    """PNG bytes of an image."""
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


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
        if not worker.ready.is_set():
            raise StarletteHTTPException(503, "the pipeline is still loading: retry when GET /health answers 200")

    async def run_job(request: Request, fn: Callable[[Job], Any]) -> tuple[Any, float]:
        """Queue fn, wait for it within request_timeout while watching for the client going away."""
        job = worker.submit(fn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.request_timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise RequestTimeout()
                done, _ = await asyncio.wait({job.future}, timeout=min(0.5, remaining))
                if done:
                    return job.future.result()
                if await request.is_disconnected():
                    log.info("client went away: its job is dropped")
                    raise ClientGone()
        finally:
            if not job.future.done():
                job.cancelled.set()

    async def answer(request: Request, fn: Callable[[Job], Any], response_format: str | None) -> Response:
        try:
            pngs, peak = await run_job(request, fn)
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
        return JSONResponse({"status": "loading"}, 503)

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


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, start loading the pipeline and serve until SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m imageserver", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a local pipeline folder or a Hugging Face repo id")
    p.add_argument("--served-model-name", required=True, help="the model id the hub routes by")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--options", default="{}", help="the registry's args table as JSON")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        opts = ServerOptions.model_validate_json(a.options)
    except ValidationError as err:
        lines = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        print(f"diffusers_server: invalid --options: {lines}", file=sys.stderr)
        return 2
    failure: list[str] = []
    server: uvicorn.Server | None = None

    def fail(reason: str) -> None:
        failure.append(reason)
        if server is not None:
            server.should_exit = True

    app = create_app(a.model, a.served_model_name, opts, on_load_failure=fail)
    server = uvicorn.Server(uvicorn.Config(app, host=a.host, port=a.port, log_level="info",
                                           timeout_graceful_shutdown=5))
    server.run()
    if failure:
        print(f"diffusers_server: could not load {a.model!r}: {failure[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
