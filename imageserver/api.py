"""The pure parts of the Diffusers image server: its options, its request shapes, size parsing, the error it answers
with. Only stdlib and pydantic, so the hub (which has no torch) validates a registry's `args` with the very model
the server reads, and unit tests run without torch.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


def parse_size(value: str, max_size: int, param: str = "size") -> tuple[int, int]:
    """(width, height) from "WxH": both multiples of 8, at least 8 and at most `max_size`; BadRequest otherwise."""
    m = _SIZE.match(value) if isinstance(value, str) else None
    if not m:
        raise BadRequest(f"'{param}' must look like \"512x512\" (width x height), not {value!r}", param)
    w, h = int(m.group(1)), int(m.group(2))
    for side in (w, h):
        if side < 8 or side % 8:
            raise BadRequest(f"'{param}' {w}x{h}: width and height must be multiples of 8 (at least 8)", param)
        if side > max_size:
            raise BadRequest(f"'{param}' {w}x{h}: width and height can be at most {max_size} for this model", param)
    return w, h


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
    request_timeout: float = Field(600, gt=0)
    files_ttl: float = Field(3600, gt=0, description="seconds an image made with response_format=url is kept")
    files_max: int = Field(256, ge=1, description="images kept for response_format=url (oldest go first)")

    @field_validator("default_size")
    @classmethod
    def _size(cls, v: str) -> str:
        try:
            parse_size(v, 1 << 30, "default_size")
        except BadRequest as err:
            raise ValueError(err.message) from None
        return v


class _Request(BaseModel):
    """Fields shared by both image endpoints, as the OpenAI SDK names them."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png"] | None = None
    user: str | None = None
    quality: str | None = None  # accepted and ignored (OpenAI's own knobs)
    background: str | None = None
    moderation: str | None = None
    style: str | None = None
    stream: Literal[False] | None = None
    # extensions
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(None, ge=1, le=500)
    guidance_scale: float | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, lt=2**63)

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
    """`cls` from `data`, or a BadRequest naming the first offending parameter."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        param = ".".join(str(p) for p in e["loc"]) or None
        if e["type"] == "extra_forbidden":
            msg = f"unknown parameter '{param}' (this server takes: {', '.join(cls.model_fields)})"
        elif e["type"] == "missing":
            msg = f"missing required parameter '{param}'"
        else:
            msg = f"'{param}': {e['msg'].removeprefix('Value error, ')}"
        raise BadRequest(msg, param) from None


def check_n(n: int, max_n: int) -> None:
    """BadRequest when more images are asked for than the model allows in one request."""
    if n > max_n:
        raise BadRequest(f"'n' is {n}: this model makes at most {max_n} images per request", "n")
