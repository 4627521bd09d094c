"""The Diffusers pipeline: torch device and dtype from the options, loading the pipeline and the ones derived from it,
calling it for a batch of jobs (progress, previews and cancellation from its step callback), what it can take (prompt
tokens, input images, default guidance). It is the worker's runner (imageserver.worker.Runner) without importing it."""

from __future__ import annotations

import copy
import gc
import inspect
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

from imageserver.api import BadRequest, LoraSpec, ServerOptions, partial_steps
from imageserver.jobs import Job, JobCancelled, LoadError, Partial, Progress
from imageserver.previews import make_previewer
from imageserver.rules import arg_bounds, call_params, check_bounds, guidance_target, is_batch_text, size_rule

log = logging.getLogger("imageserver")

# Pipelines (class-name prefixes) that edit an image by instruction rather than denoising it from a noised copy.
INSTRUCTION_EDIT = ("QwenImageEdit", "FluxKontext", "Flux2")
# Pipelines (class-name prefixes) that take several reference images in one edit, and how many by default. Diffusers'
# signatures cannot tell: every pipeline's `image` accepts a list (a batch); these read a list as references.
MULTI_IMAGE = {"QwenImageEditPlus": 3, "Flux2": 10}
TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")


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


def missing_library(err: ImportError) -> str:
    """One line for a pipeline that needs a library its environment lacks, instead of transformers' paragraph.
    Torchvision is the known case: Qwen2-VL's processor (Qwen-Image-Edit and -Plus) cannot load without it."""
    text = " ".join(str(err).split())
    if "torchvision" in text.lower():
        what = text.split(" requires ")[0] if " requires " in text else "this pipeline"
        return (f"{what} needs torchvision, which this engine environment does not have: set up the engine "
                "environment with `hub engines setup diffusers --device cuda` (the build with torchvision)")
    return f"a library this pipeline needs is missing from the engine environment: {text}"

def clip_text_model_alias(pipe: Any) -> None:
    """Transformers 5 flattened CLIPTextModel (its layers are no longer under `.text_model`), but Stable Diffusion
    1.x's encode_prompt still reads `text_encoder.text_model.final_layer_norm` when a request sets clip_skip, and
    failed with an AttributeError (a 500). The encoder answers for its old inner module: a plain attribute, not a
    registered submodule, so its weights and state dict are unchanged."""
    for name in ("text_encoder", "text_encoder_2"):
        enc = getattr(pipe, name, None)
        if enc is not None and hasattr(enc, "final_layer_norm") and not hasattr(enc, "text_model"):
            object.__setattr__(enc, "text_model", enc)


# the active adapter after a switch that failed part-way: equal to no request's, so the next call sets its own again
# (enabling the adapters first) instead of running with whatever the failed switch left on
UNKNOWN: Any = ("?", float("nan"))


def _lora_name(lora: tuple[str, float] | None) -> str:
    return "base" if lora is None else f"{lora[0]}@{lora[1]:g}"


class Pipelines:
    """The loaded pipeline and the ones derived from it (sharing its weights), placed on one device."""

    TASKS: ClassVar[dict[str, str]] = {"text2image": "AutoPipelineForText2Image",
                                       "image2image": "AutoPipelineForImage2Image",
                                       "inpaint": "AutoPipelineForInpainting"}

    def __init__(self, source: str, opts: ServerOptions, revision: str | None = None,
                 loras: dict[str, LoraSpec] | None = None) -> None:
        self.source = source
        self.loras = loras or {}  # LoRA adapters, loaded once per load (start and wake)
        self.active: tuple[str, float] | None = None  # the adapter (and scale) the shared modules apply now
        self.revision = revision  # of a hub repo source (None: its main branch)
        self.opts = opts
        self.base: Any = None
        self.device = "cpu"
        self.derived: dict[str, Any] = {}  # task -> its pipeline, derived at load
        self.unsupported: dict[str, str] = {}  # task -> why the pipeline cannot do it
        self.params: dict[str, dict[str, type]] = {}  # task -> the call arguments a request may set (rules.py)
        self.bounds: dict[str, tuple[int, int, str]] = {}  # call argument -> its bounds in this pipeline (rules.py)
        self.guidance: dict[str, tuple[str | None, str]] = {}  # task -> where guidance_scale goes (rules.py)
        self._offloaded: Any = None  # the pipeline whose offload hooks are installed
        self.previewer: Any = None
        self.token_counter: tuple[Any, int, str] | None = None  # (tokenizer copy, limit, name)
        self._token_lock = threading.Lock()  # fast tokenizers refuse concurrent use ("Already borrowed")
        self.calls = 0  # pipeline calls made
        self.stopped = 0  # calls stopped part-way because nobody waited for their images any more
        self.call_seconds = 0.0  # time in pipeline calls
        self.callback_seconds = 0.0  # of which in the step callback of streaming calls (progress and previews)
        self.lora_loads = 0  # adapters loaded (each once per load of the pipeline)
        self.lora_switches = 0  # changes of the active adapter between calls
        self.lora_switch_seconds = 0.0  # time in those changes (set_adapters, enable/disable_lora)

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
        try:
            pipe = cls.from_pretrained(self.source, dtype=dtype,
                                       **({"revision": self.revision} if self.revision else {}))
        except ImportError as err:
            raise LoadError(missing_library(err)) from err
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
        clip_text_model_alias(pipe)
        self._load_loras(pipe)
        self.base = pipe
        self._place(pipe)
        self._derive()
        self.previewer = make_previewer(pipe, o.preview_vae, self.device, dtype)
        self.token_counter = self._token_counter(pipe)
        log.info("partial images: %s; prompt token limit: %s; input images per edit: %d",
                 getattr(self.previewer, "kind", "none"), self.token_counter[1] if self.token_counter else "none",
                 self.max_input_images())

    def _load_loras(self, pipe: Any) -> None:
        """Load every adapter once, under its name, into the pipeline's modules (shared with the derived pipelines),
        then switch them all off: a request without an adapter runs the base. A failing adapter fails the load."""
        self.active = None
        if not self.loras:
            return
        if not hasattr(pipe, "load_lora_weights"):
            raise LoadError(f"loras: {type(pipe).__name__} takes no LoRA adapters (it has no load_lora_weights); "
                               "remove [loras] from this model")
        for name, spec in self.loras.items():
            t0 = time.perf_counter()
            try:
                kw = {"weight_name": spec.weight_name} if spec.weight_name else {}
                with warnings.catch_warnings():  # peft warns that a second adapter joins the first: as meant here
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    pipe.load_lora_weights(spec.source, adapter_name=name, **kw)
            except Exception as err:
                raise LoadError(f"LoRA adapter {name!r} ({spec.source}) could not be loaded: "
                                   f"{type(err).__name__}: {err}") from err
            self.lora_loads += 1
            log.info("LoRA adapter %r loaded from %s in %.2fs", name, spec.source, time.perf_counter() - t0)
        pipe.disable_lora()

    def _use_lora(self, pipe: Any, lora: tuple[str, float] | None) -> None:
        """Make the shared modules apply `lora` (None: none) for the next call, unless they already do. Only the
        adapters' switches and weights change: the base's weights stay as loaded."""
        if lora == self.active:
            return
        t0 = time.perf_counter()
        was, self.active = self.active, UNKNOWN  # a switch that fails part-way leaves the modules in doubt
        if lora is None:
            pipe.disable_lora()
        else:
            if was is None or was is UNKNOWN:
                pipe.enable_lora()
            pipe.set_adapters([lora[0]], adapter_weights=[lora[1]])
        took = time.perf_counter() - t0
        self.lora_switches += 1
        self.lora_switch_seconds += took
        log.info("LoRA: %s -> %s in %.1f ms", _lora_name(was), _lora_name(lora), took * 1000)
        self.active = lora

    def unload(self) -> None:
        """Drop the pipeline and those derived from it (sleep); the source, options and device stay, and `load`
        brings them back. CUDA's cached blocks go back to the driver."""
        self.base, self._offloaded, self.active = None, None, None
        self.previewer, self.token_counter = None, None
        self.derived, self.unsupported, self.params, self.bounds, self.guidance = {}, {}, {}, {}, {}
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

    def _derive(self) -> None:
        """Derive the pipeline of every task now, on the worker thread (from_pipe touches the shared modules, so not
        beside a running call), so that a request is checked against the pipeline that will run it before it queues.
        A task whose derivation fails is one the model cannot do: its requests get 400 with the reason."""
        derived, unsupported = {}, {}
        for task in self.TASKS:
            try:
                derived[task] = self._from_pipe(task)
            except Exception as err:  # whatever from_pipe raises, the task is not served
                unsupported[task] = f"{type(err).__name__}: {err}"
        served = {**derived, "edit": self.base} if self.is_instruction_edit() else derived
        params = {task: call_params(type(pipe)) for task, pipe in served.items()}
        self.derived, self.unsupported, self.params = derived, unsupported, params
        self.bounds = arg_bounds(self.base)
        self.guidance = {task: guidance_target(pipe) for task, pipe in served.items()}
        if self.opts.default_guidance is not None and not any("guidance_scale" in p for p in params.values()):
            log.warning("default_guidance: %s takes no guidance_scale; the option is left out of its calls",
                        type(self.base).__name__)
        log.info("tasks: %s", "; ".join(f"{task}: {type(pipe).__name__} (takes {', '.join(sorted(params[task]))})"
                                        for task, pipe in served.items()))

    def _from_pipe(self, task: str) -> Any:
        """The pipeline of `task` sharing the loaded one's modules (Diffusers' AutoPipelineFor*.from_pipe)."""
        import diffusers

        pipe = getattr(diffusers, self.TASKS[task]).from_pipe(self.base)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def size_rule(self) -> tuple[int, str]:
        """The multiple that widths and heights must be for the loaded pipeline, and why (rules.size_rule)."""
        return size_rule(self.base)

    def is_instruction_edit(self) -> bool:
        """Whether the loaded pipeline edits images by instruction (edits go to it as is)."""
        return type(self.base).__name__.startswith(INSTRUCTION_EDIT)

    def get(self, task: str, param: str) -> Any:
        """The pipeline for `task` (text2image, image2image, inpaint, edit); BadRequest if the model cannot do it."""
        if task == "edit":
            return self.base
        if task in self.derived:
            return self.derived[task]
        what = {"text2image": "generate from text alone", "image2image": "edit an image without a mask",
                "inpaint": "inpaint with a mask"}[task]
        why = self.unsupported.get(task, "the pipeline is not loaded")
        raise BadRequest(f"this model ({type(self.base).__name__}) cannot {what}: {why}", param)

    def call_params(self, task: str, param: str) -> tuple[str, dict[str, type]]:
        """The class name of the pipeline that runs `task` and the call arguments a request may set for it;
        BadRequest if the model cannot do the task."""
        pipe = self.get(task, param)
        return type(pipe).__name__, self.params.get(task, {})

    def check_bounds(self, args: dict[str, Any], pipeline: str) -> None:
        """BadRequest for a call argument outside what the loaded pipeline's modules allow (rules.arg_bounds)."""
        check_bounds(args, self.bounds, pipeline)

    def check_input_images(self, images: list[Any], param: str = "image") -> None:
        """BadRequest where the instruction-edit pipeline's own image check refuses an input image as it will be sent
        (FLUX.2: at least 64 px a side, at most 8:1), before the request queues: inside the call it is a failure."""
        check = getattr(getattr(self.base, "image_processor", None), "check_image_input", None)
        if check is None or not self.is_instruction_edit():
            return
        for im in images:
            try:
                check(im)
            except ValueError as err:
                raise BadRequest(f"{type(self.base).__name__} refuses the input image at {im.size[0]}x{im.size[1]} "
                                 f"(inputs are resized to the output size): {err}", param) from None

    def max_input_images(self) -> int:
        """The most input images one edit may send: 1 for image-to-image and inpainting; for a pipeline that edits by
        instruction, args.max_input_images, else its family's (MULTI_IMAGE), else 1."""
        if self.base is not None and not self.is_instruction_edit():
            return 1
        if self.opts.max_input_images is not None:
            return self.opts.max_input_images
        name = type(self.base).__name__ if self.base is not None else (self.opts.pipeline or "")
        return next((n for prefix, n in MULTI_IMAGE.items() if name.startswith(prefix)), 1)

    def guidance_target(self, task: str) -> tuple[str | None, str]:
        """Where a request's guidance_scale goes for the pipeline of `task`, and why (rules.guidance_target)."""
        return self.guidance.get(task, ("guidance_scale", ""))

    def default_guidance(self) -> float | None:
        """The guidance the pipeline uses when a request gives none: the default of the argument its guidance_scale
        goes to (rules.guidance_target); None where it has none or nothing reads it."""
        if self.base is None:
            return None
        to, _ = guidance_target(self.base)
        params = inspect.signature(type(self.base).__call__).parameters
        default = params[to].default if to in params else None
        if isinstance(default, int | float) and not isinstance(default, bool):
            return float(default)
        return None

    def _token_counter(self, pipe: Any) -> tuple[Any, int, str] | None:
        """The tokenizer whose limit the prompt must fit and that limit: args.max_prompt_tokens, else the longest
        that reaches the model (its model_max_length, capped by the call's max_sequence_length)."""
        if self.opts.max_prompt_tokens == 0:
            return None
        params = inspect.signature(type(pipe).__call__).parameters
        seq = params["max_sequence_length"].default if "max_sequence_length" in params else None
        best: tuple[Any, int, str] | None = None
        for name in TOKENIZERS:
            tok = getattr(pipe, name, None)
            limit = getattr(tok, "model_max_length", None)
            if not isinstance(limit, int) or limit > 1_000_000:  # unbounded: the call's max_sequence_length cuts
                limit = seq if isinstance(seq, int) else None
            elif name != "tokenizer" and isinstance(seq, int):  # T5 and friends beside a CLIP
                limit = min(limit, seq)
            if tok is not None and limit and (best is None or limit > best[1]):
                best = (tok, limit, name)
        if best is None:
            return None
        limit = self.opts.max_prompt_tokens or best[1]
        return copy.deepcopy(best[0]), limit, best[2]  # a copy: the worker's calls use the original meanwhile

    def check_prompt_tokens(self, text: str, param: str) -> int:
        """BadRequest when `text` has more tokens than the model reads (the pipeline would cut the rest silently);
        else its token count (0 where the pipeline has no tokenizer to count with)."""
        if self.token_counter is None or not text:
            return 0
        tok, limit, name = self.token_counter
        with self._token_lock:
            count = len(tok(text, truncation=False, verbose=False)["input_ids"])
        if count > limit:
            why = ("max_prompt_tokens" if self.opts.max_prompt_tokens else
                   f"what its {name} reads; set args.max_prompt_tokens = 0 to let the pipeline cut long prompts")
            raise BadRequest(f"'{param}' is {count} tokens: this model takes at most {limit} ({why}); shorten it",
                             param)
        return count

    def run(self, jobs: list[Job]) -> list[list[Any]]:
        """Make every job's images (the jobs share one task and shape) in as few pipeline calls as the pipeline allows;
        stop at the next step once every job is cancelled. Image i of a job comes from seed + i, so a job makes the
        same images alone as in a batch."""
        w = jobs[0].work
        pipe = self.get(w.task, w.param)
        self._place(pipe)
        if self.loras:
            self._use_lora(self.base, w.lora)  # the base's modules are the derived pipelines' modules
        params = inspect.signature(type(pipe).__call__).parameters
        shared = {k: v for k, v in w.shared.items() if v is not None}
        plans = self._plan(jobs, params)
        # requests were checked against this signature (rules.py): what is left out here the server chose itself,
        # such as the size of an image-to-image call, which resizing the input image sets
        dropped = sorted(k for k, v in (shared | plans[0][0]).items() if v is not None and k not in params)
        if dropped:
            log.debug("%s takes no %s: not passed", type(pipe).__name__, ", ".join(dropped))
        images: dict[Job, dict[int, Any]] = {job: {} for job in jobs}
        for call, members in plans:
            call = {k: v for k, v in (shared | call).items() if v is not None and k in params}
            if "callback_on_step_end" in params:
                call["callback_on_step_end"] = self._on_step(jobs, members, w.shared)
                if "latents" in getattr(pipe, "_callback_tensor_inputs", ()):
                    call["callback_on_step_end_tensor_inputs"] = ["latents"]
            self.calls += 1
            t0 = time.perf_counter()
            try:
                out = pipe(**call).images
            finally:
                self.call_seconds += time.perf_counter() - t0
            for (job, index), image in zip(members, out, strict=False):
                images[job][index] = image
        return [[imgs[i] for i in sorted(imgs)] for imgs in images.values()]

    @staticmethod
    def _generator(seed: int) -> Any:
        import torch

        return torch.Generator("cpu").manual_seed(seed % 2**64)

    def _plan(self, jobs: list[Job], params: Any) -> list[tuple[dict[str, Any], list[tuple[Job, int]]]]:
        """The calls to make: each call's per-image arguments and the (job, image index) of each image it makes."""
        w = jobs[0].work
        per_prompt = "num_images_per_prompt" in params
        if per_prompt and w.key() is not None:  # one call, one prompt and one generator per image
            members = [(job, i) for job in jobs for i in range(job.work.n)]
            call: dict[str, Any] = {"prompt": [j.work.prompt for j, _ in members],
                                    "generator": [self._generator(j.work.seed + i) for j, i in members]}
            if w.negative_prompt is not None:
                call["negative_prompt"] = [j.work.negative_prompt for j, _ in members]
            if w.image is not None:
                call["image"] = [j.work.image for j, _ in members]
            if w.mask is not None:
                call["mask_image"] = [j.work.mask for j, _ in members]
            for name, value in w.shared.items():  # every member's (their keys are equal), one per image
                if isinstance(value, str) and name in params and is_batch_text(params[name]):
                    call[name] = [value] * len(members)
            return [(call, members)]
        plans = []
        for job in jobs:
            one = {"prompt": job.work.prompt, "negative_prompt": job.work.negative_prompt, "image": job.work.image,
                   "mask_image": job.work.mask}
            if per_prompt:
                n = job.work.n
                plans.append((one | {"num_images_per_prompt": n,
                                     "generator": [self._generator(job.work.seed + i) for i in range(n)]},
                              [(job, i) for i in range(n)]))
            else:
                plans += [(one | {"generator": self._generator(job.work.seed + i)}, [(job, i)])
                          for i in range(job.work.n)]
        return plans

    def _on_step(self, jobs: list[Job], members: list[tuple[Job, int]], shared: dict[str, Any]) -> Callable:
        """The step callback of one call: stop once every job is cancelled; progress and partial images to the
        streaming jobs among `members` (row r of the latents is members[r])."""
        rows: dict[Job, list[tuple[int, int]]] = {}
        for row, (job, index) in enumerate(members):
            rows.setdefault(job, []).append((row, index))
        streams = [job for job in rows if job.events is not None]
        width, height = shared.get("width"), shared.get("height")

        def on_step(pipe: Any, i: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            if all(job.cancelled.is_set() for job in jobs):
                log.info("request abandoned (timeout or client gone): stopped after step %d", i + 1)
                self.stopped += 1
                raise JobCancelled()
            if not streams:
                return {}
            t0 = time.perf_counter()
            steps = getattr(pipe, "num_timesteps", None) or shared.get("num_inference_steps") or i + 1
            now = time.monotonic()
            for job in streams:
                if job.cancelled.is_set():
                    continue
                job.emit(Progress(i + 1, steps, now - job.started))
                wanted = partial_steps(steps, job.work.partial_images)
                if i + 1 in wanted and self.previewer is not None and kw.get("latents") is not None:
                    self._previews(job, pipe, kw["latents"], rows[job], wanted.index(i + 1), width, height)
            self.callback_seconds += time.perf_counter() - t0
            return {}

        return on_step

    def _previews(self, job: Job, pipe: Any, latents: Any, rows: list[tuple[int, int]], k: int, width: int,
                  height: int) -> None:
        try:
            previews = self.previewer.decode(pipe, latents[[r for r, _ in rows]], width, height)
        except Exception as err:
            log.warning("no partial images for this model: %s: %s", type(err).__name__, err)
            self.previewer = None
            return
        for (_, index), image in zip(rows, previews, strict=True):
            job.emit(Partial(index, k, image))
