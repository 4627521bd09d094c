"""The Diffusers pipeline: torch device and dtype from the options, loading the pipeline and the ones derived from it,
calling it, and measuring the peak memory of each call."""

from __future__ import annotations

import gc
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import psutil

from imageserver.api import MB, BadRequest, ServerOptions
from imageserver.worker import Job, JobCancelled

log = logging.getLogger("imageserver")

# Pipelines (class-name prefixes) that edit an image by instruction rather than denoising it from a noised copy.
INSTRUCTION_EDIT = ("QwenImageEdit", "FluxKontext")


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

    def unload(self) -> None:
        """Drop the pipeline and those derived from it (sleep); the source, options and device stay, and `load`
        brings them back. CUDA's cached blocks go back to the driver."""
        self.base, self._offloaded = None, None
        self.derived.clear()
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

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
