"""The pure parts of the Diffusers image server: its options, its request shapes, size parsing, the error it answers
with. Only stdlib and pydantic, so the hub (which has no torch) validates a registry's `args` with the very model
the server reads, and unit tests run without torch.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
MB = 1024 * 1024


class BadRequest(Exception):
    """A request the server refuses with 400: `param` names the offending parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        """The OpenAI error shape."""
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": "invalid_value" if self.param else "invalid_request"}}


def parse_size(value: str, max_size: int, param: str = "size", multiple: int = 8, why: str = ""
               ) -> tuple[int, int]:
    """(width, height) from "WxH": both multiples of `multiple` (the pipeline's rule, `why` says where it comes
    from), at least that and at most `max_size`; BadRequest otherwise."""
    m = _SIZE.match(value) if isinstance(value, str) else None
    if not m:
        raise BadRequest(f"'{param}' must look like \"512x512\" (width x height), not {value!r}", param)
    w, h = int(m.group(1)), int(m.group(2))
    for side in (w, h):
        if side < max(multiple, 1) or side % max(multiple, 1):
            raise BadRequest(f"'{param}' {w}x{h}: width and height must be multiples of {multiple} for this model"
                             f"{' (' + why + ')' if why else ''}, e.g. {w // multiple * multiple or multiple}x"
                             f"{h // multiple * multiple or multiple}", param)
        if side > max_size:
            raise BadRequest(f"'{param}' {w}x{h}: width and height can be at most {max_size} for this model", param)
    return w, h


QUALITIES = ("low", "medium", "high")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MAX_PARTIAL_IMAGES = 3


class QualitySteps(BaseModel):
    """Denoising steps for each `quality` of a request; a level left out is derived from `default_steps` when the
    options are validated (low 30%, medium 60%, high 100% of it, at least 1)."""

    model_config = ConfigDict(extra="forbid")

    low: int | None = Field(None, ge=1, le=500, description="steps for quality=low")
    medium: int | None = Field(None, ge=1, le=500, description="steps for quality=medium")
    high: int | None = Field(None, ge=1, le=500, description="steps for quality=high")

    def resolved(self, default_steps: int) -> QualitySteps:
        """These steps with every level set."""
        share = {"low": 0.3, "medium": 0.6, "high": 1.0}
        return QualitySteps(**{q: v if (v := getattr(self, q)) is not None else max(1, round(default_steps * f))
                               for q, f in share.items()})


class ServerOptions(BaseModel):
    """The `args` table of a diffusers model; the hub passes it to the image server as JSON (--options)."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str | None = Field(None, description="Diffusers pipeline class (e.g. QwenImageEditPipeline); "
                                 "default: the class saved with the model")
    device: str = Field("auto", description='"auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", ...')
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    attention_slicing: bool = False
    compile: bool = False
    scheduler: str | None = Field(None, description="a Diffusers scheduler class name, e.g. EulerDiscreteScheduler")
    cpu_threads: int | None = Field(None, ge=1, description="torch threads on CPU (default: torch's own)")
    max_size: int = Field(2048, ge=8)
    max_n: int = Field(4, ge=1)
    max_upload_mb: float = Field(20, gt=0)
    default_size: str = "1024x1024"
    default_steps: int = Field(30, ge=1)
    default_guidance: float | None = Field(None, ge=0, description="guidance_scale when a request gives none "
                                           "(default: the pipeline's own)")
    quality_steps: QualitySteps = Field(default_factory=QualitySteps,
                                        description="steps for a request's quality low, medium or high when it gives "
                                        "no num_inference_steps (quality auto, or none: default_steps); levels left "
                                        "out: 30%, 60% and 100% of default_steps")
    request_timeout: float = Field(600, gt=0)
    files_ttl: float = Field(3600, gt=0, description="seconds an image made with response_format=url is kept")
    files_max: int = Field(256, ge=1, description="images kept for response_format=url (oldest go first)")
    max_batch: int = Field(1, ge=1, description="most images one pipeline call makes from queued requests of one "
                           "shape (task, size, steps, guidance, strength); 1: every request runs alone. Memory grows "
                           "with the batch: raise it where the device has room")
    batch_wait: float = Field(0.05, ge=0, le=10, description="seconds a batch waits for more requests of its shape "
                              "when the last batch held several (their clients are sending again); 0: never waits")
    preview_vae: str | None = Field(None, description="an AutoencoderTiny (folder or repo id, e.g. madebyollin/taesd) "
                                    "that decodes streamed partial images; default: a linear latent-to-RGB map fitted "
                                    "to the model's own VAE at load (cheaper, blurrier)")
    max_prompt_chars: int = Field(32000, ge=1, description="longest prompt (and negative_prompt) in characters")
    max_prompt_tokens: int | None = Field(None, ge=0, description="longest prompt in tokens of the pipeline's "
                                          "tokenizer; default: what the pipeline reads (e.g. 77 for CLIP), so a longer "
                                          "prompt is refused instead of silently cut; 0: no token limit (the pipeline "
                                          "cuts long prompts, as Diffusers does)")
    max_input_pixels: int = Field(50_000_000, ge=64, description="largest uploaded image or mask in pixels (width "
                                  "x height), checked from its header before it is decoded")
    max_input_images: int | None = Field(None, ge=1, description="most input images of one edit by an instruction "
                                         "pipeline; default: what the pipeline takes (several for QwenImageEditPlus "
                                         "and FLUX.2, else 1). Image-to-image and inpainting take one")

    @field_validator("default_size")
    @classmethod
    def _size(cls, v: str) -> str:
        try:
            parse_size(v, 1 << 30, "default_size")
        except BadRequest as err:
            raise ValueError(err.message) from None
        return v

    @model_validator(mode="after")
    def _quality_steps(self) -> ServerOptions:
        self.quality_steps = self.quality_steps.resolved(self.default_steps)
        return self


class LoraSpec(BaseModel):
    """A LoRA adapter the server loads at start (--loras, from the registry's `[models.x.loras]`): a local folder or
    .safetensors file, or a hub repo id, already resolved by the hub."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1)
    weight_name: str | None = None
    scale: float = Field(1.0, ge=-10, le=10)


Loras = TypeAdapter(dict[str, LoraSpec])


class _Request(BaseModel):
    """Fields shared by both image endpoints, as the OpenAI SDK names them."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    quality: Literal["low", "medium", "high", "auto", "standard", "hd"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    stream: bool | None = None
    partial_images: int | None = Field(None, ge=0, le=MAX_PARTIAL_IMAGES)
    user: str | None = None  # accepted and ignored, as OpenAI's own knobs below
    safety_identifier: str | None = None
    moderation: str | None = None
    style: str | None = None
    # extensions
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(None, ge=1, le=500)
    guidance_scale: float | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, lt=2**63)
    lora: str | None = Field(None, min_length=1, description="the LoRA adapter to apply (one the server was started "
                             "with); the model id <model>:<adapter> says the same")
    lora_scale: float | None = Field(None, ge=-10, le=10, description="the adapter's strength (default: its scale "
                                     "from the registry); needs an adapter")
    _call_args: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def call_args(self) -> dict[str, Any]:
        """The parameters outside these fields, by name and as sent: arguments for the pipeline's __call__, which the
        server checks against its signature once it knows the pipeline (imageserver/rules.py)."""
        return self._call_args

    @field_validator("lora_scale", mode="before")
    @classmethod
    def _scale_is_a_number(cls, v: Any) -> Any:
        if isinstance(v, bool):  # pydantic would read true as 1.0
            raise ValueError("must be a number, not a boolean")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the prompt is empty: describe the image you want")
        return v


class GenerationRequest(_Request):
    """The JSON body of POST /v1/images/generations."""


class EditRequest(_Request):
    """The non-file fields of POST /v1/images/edits (multipart form values arrive as strings)."""

    strength: float | None = Field(None, gt=0, le=1)
    input_fidelity: str | None = None


def validate_request(cls: type[_Request], data: dict[str, Any]) -> _Request:
    """`cls` from `data`, or a BadRequest naming the first offending parameter. Parameters that are not its fields are
    kept as the request's call_args: whether the pipeline takes them is known only from the loaded pipeline."""
    for key, value in data.items():
        if not str(key).isprintable() or not str(key).isascii():  # it goes into error messages as is
            raise BadRequest(f"unknown parameter {str(key)!a}: parameter names are printable ASCII")
        check_unicode(value, str(key))
    fields = {k: v for k, v in data.items() if k in cls.model_fields}
    try:
        req = cls.model_validate(fields)
    except ValidationError as err:
        e = err.errors()[0]
        param = ".".join(str(p) for p in e["loc"]) or None
        if e["type"] == "missing":
            msg = f"missing required parameter '{param}'"
        else:
            msg = f"'{param}': {e['msg'].removeprefix('Value error, ')}"
        raise BadRequest(msg, param) from None
    req._call_args = {str(k): v for k, v in data.items() if k not in cls.model_fields}
    return req


def check_n(n: int, max_n: int) -> None:
    """BadRequest when more images are asked for than the model allows in one request."""
    if n > max_n:
        raise BadRequest(f"'n' is {n}: this model makes at most {max_n} images per request", "n")


def check_unicode(value: Any, param: str) -> None:
    """BadRequest when a string holds what UTF-8 cannot encode (a lone UTF-16 surrogate such as "\\ud800")."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise BadRequest(f"'{param}' is not valid Unicode: {err.reason} at character {err.start} "
                             f"({value[err.start]!a}); send UTF-8 text", param) from None


def check_prompt_chars(req: _Request, max_chars: int) -> None:
    """BadRequest when the prompt or negative prompt is longer than `max_chars` characters."""
    for param in ("prompt", "negative_prompt"):
        text = getattr(req, param)
        if text is not None and len(text) > max_chars:
            raise BadRequest(f"'{param}' is {len(text)} characters: this model takes at most {max_chars} "
                             "(max_prompt_chars)", param)


def resolve_steps(req: _Request, opts: ServerOptions) -> tuple[int, str]:
    """Denoising steps of a request and the quality it honestly reports: an explicit num_inference_steps wins, then
    low, medium or high (standard is medium, hd is high) from quality_steps; auto or none is default_steps. The
    quality is "auto" unless a level chose the steps."""
    if req.num_inference_steps is not None:
        return req.num_inference_steps, "auto"
    quality = {"standard": "medium", "hd": "high"}.get(req.quality or "auto", req.quality or "auto")
    if quality == "auto":
        return opts.default_steps, "auto"
    return getattr(opts.quality_steps, quality), quality


def check_output(req: _Request, can_alpha: bool = False) -> str:
    """The output format of a request (png unless it asks for jpeg or webp); BadRequest for what cannot be made."""
    if req.background == "transparent" and not can_alpha:
        raise BadRequest("background=transparent: this model cannot make transparent images (Diffusers pipelines "
                         "make opaque RGB): use background=opaque or auto", "background")
    if req.stream and req.response_format == "url":
        raise BadRequest("a streamed response carries its images as b64_json: leave out response_format=url or stream",
                         "response_format")
    return req.output_format or "png"


def partial_steps(total: int, count: int) -> list[int]:
    """The steps (1-based) after which `count` partial images are sent: evenly spaced before the last step, so fewer
    than `count` when there are too few steps."""
    if count <= 0 or total <= 1:
        return []
    return sorted({min(total - 1, max(1, int(k * total / (count + 1) + 0.5))) for k in range(1, count + 1)})


def pick_lora(req: _Request, served_name: str, loras: dict[str, LoraSpec]) -> tuple[str, float] | None:
    """The (adapter, scale) a request asks for: its `lora` field, or a model id `<served name>:<adapter>` (split at
    the last ':' when the suffix is one of the adapters and the id is not the served name itself); None for the base.
    BadRequest for an adapter the server does not have, a lora_scale without an adapter, or two different adapters
    asked for at once."""
    name = req.lora
    if req.model and req.model != served_name and ":" in req.model:  # a base named <x>:<adapter> is itself
        prefix, _, suffix = req.model.rpartition(":")
        if suffix in loras and prefix:
            if name is not None and name != suffix:
                raise BadRequest(f"'lora' is {name!r} but the model id {req.model!r} names adapter {suffix!r}: "
                                 "ask for one", "lora")
            name = suffix
    if name is None:
        if req.lora_scale is not None:
            raise BadRequest("'lora_scale' needs an adapter: set 'lora' (or the model id <model>:<adapter>) too",
                             "lora_scale")
        return None
    if not loras:
        raise BadRequest(f"'lora': model {served_name!r} has no LoRA adapters (add them under "
                         f"[models.{served_name}.loras] in the registry)", "lora")
    if name not in loras:
        raise BadRequest(f"'lora': model {served_name!r} has no adapter {name!r} (its adapters: "
                         f"{', '.join(sorted(loras))})", "lora")
    return name, req.lora_scale if req.lora_scale is not None else loras[name].scale
