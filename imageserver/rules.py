"""What the loaded pipeline accepts, read from the pipeline itself rather than from a table of models: the size
multiple from its VAE's scale factor and latent packing, and the call arguments a request may set from its
`__call__` signature. A request that asks for what the pipeline cannot take gets a 400 naming the parameter and what
would fit, instead of a 500 from inside the pipeline or an argument silently dropped.

Torch-free: it only inspects attributes and signatures, so unit tests hand it stand-in classes.
"""

from __future__ import annotations

import inspect
import math
import reprlib
from collections.abc import Iterable
from typing import Any

from imageserver.api import BadRequest

# Request fields that go to the pipeline under the same name, with their types: refused when its __call__ has no
# such argument
MAPPED: dict[str, type] = {"negative_prompt": str, "guidance_scale": float, "strength": float,
                           "num_inference_steps": int}
# Call arguments the server sets itself, and how. The prompt token limit is read from max_sequence_length: a request
# changing it would let the pipeline cut prompts the server let through.
SERVER_SET = {
    "prompt": "from 'prompt'", "width": "from 'size'", "height": "from 'size'", "generator": "from 'seed'",
    "latents": "from 'seed'", "num_images_per_prompt": "from 'n'",
    "image": "from the image uploads of /v1/images/edits", "mask_image": "from the mask upload of /v1/images/edits",
    "output_type": "itself ('output_format' picks the file format)",
    "max_sequence_length": "itself (the prompt token limit is read from it)",
    "max_area": "from 'size' (FLUX Kontext derives its size from it: max_size would not hold)",
    **dict.fromkeys(("return_dict", "callback", "callback_steps", "callback_on_step_end",
                     "callback_on_step_end_tensor_inputs"), "itself"),
}
SCALARS: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}
# Numbers a pipeline argument may hold: anything a sampler takes, nothing that overflows inside the pipeline (a 500)
MAX_INT, MAX_FLOAT = 2**31 - 1, 1e6
KINDS = {bool: "true or false", int: f"an integer between -{MAX_INT} and {MAX_INT}",
         float: f"a number between -{MAX_FLOAT:.0f} and {MAX_FLOAT:.0f}", str: "a string"}


def size_rule(pipe: Any) -> tuple[int, str]:
    """The multiple that widths and heights must be for `pipe`, and why, as its own check_inputs has it: its VAE's
    scale factor times 2 where it packs latents 2x2 (FLUX, Qwen-Image), times its transformer's patch size (SD3); the
    UNet pipelines check multiples of 8 whatever their VAE."""
    vae = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    name = type(pipe).__name__
    if hasattr(pipe, "_pack_latents"):
        return vae * 2, f"{name}: its VAE scales by {vae} and it packs latents 2x2"
    patch = getattr(pipe, "patch_size", None)
    if isinstance(patch, int) and patch > 1:
        return vae * patch, f"{name}: its VAE scales by {vae} and its transformer's patches are {patch}x{patch}"
    return max(vae, 8), f"{name}: its VAE scales by {vae}" + (", and the pipeline checks 8" if vae < 8 else "")


def guidance_target(pipe: Any) -> tuple[str | None, str]:
    """Where a request's `guidance_scale` goes for `pipe`, and why when not to its own: to `guidance_scale` where
    that is the pipeline's real guidance (classifier-free in SD, SDXL, SD3 and FLUX.2 klein base; embedded in the
    guidance-distilled FLUX.1 [dev] and Kontext, whose transformer takes it as an input); to `true_cfg_scale` where
    the pipeline has one and its transformer embeds no guidance (Qwen-Image, FLUX.1 [schnell]: their guidance_scale
    is read by nothing); None where nothing reads it (a step-distilled FLUX.2 klein, or no guidance_scale at all)."""
    params = inspect.signature(type(pipe).__call__).parameters
    name = type(pipe).__name__
    if "guidance_scale" not in params:
        return None, f"{name} takes no guidance_scale"
    if getattr(getattr(pipe, "config", None), "is_distilled", False) is True:
        return None, f"{name} is step-distilled (is_distilled): it runs without guidance"
    if "true_cfg_scale" in params:
        transformer = getattr(getattr(pipe, "transformer", None), "config", None)
        if getattr(transformer, "guidance_embeds", False) is not True:
            return "true_cfg_scale", (f"{name}'s transformer embeds no guidance: its classifier-free guidance is "
                                      "true_cfg_scale")
    return "guidance_scale", ""



def _kinds(param: inspect.Parameter) -> list[str]:
    """The types a call argument's annotation names, None left out ("str | list[str] | None": str, list[str])."""
    ann = param.annotation
    text = ann.__name__ if isinstance(ann, type) else str(ann)
    text = text.replace("typing.", "").replace(" ", "").replace("List[", "list[")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional["):-1]
    return [t for t in text.split("|") if t not in ("None", "NoneType")]


def is_batch_text(param: inspect.Parameter) -> bool:
    """Whether a call argument is a text per image of a batch (`str | list[str]`): the prompts of a second or third
    text encoder (SDXL's and SD3's prompt_2, SD3's prompt_3 and their negatives). A request gives one string; a
    batched call must pass it as a list as long as its prompts, or the encoders' batches differ. Only prompts: some
    signatures annotate tensors so (Flux2KleinPipeline's negative_prompt_embeds)."""
    return "prompt" in param.name and not param.name.endswith("_embeds") and sorted(_kinds(param)) == ["list[str]",
                                                                                                        "str"]


def _scalar(param: inspect.Parameter) -> type | None:
    """The plain type of a call argument (bool, int, float or str, None allowed), from its annotation, else from its
    default; None for anything else (tensors, lists, callbacks, dicts), which JSON cannot carry. A text per image
    (is_batch_text) is a string: the server makes the batch's list."""
    if is_batch_text(param):
        return str
    kinds = _kinds(param)
    ann = param.annotation
    if len(kinds) == 1 and kinds[0] in SCALARS:
        return SCALARS[kinds[0]]
    default = param.default
    if ann is inspect.Parameter.empty and type(default) in (bool, int, float, str):
        return type(default)
    return None


def call_params(pipe_cls: type) -> dict[str, type]:
    """The call arguments of `pipe_cls` that a request may set, with their types: the MAPPED ones it has and every
    other named argument of a plain type. The server's own (SERVER_SET), private ones and **kwargs are left out: a
    pipeline takes only what its signature names."""
    out: dict[str, type] = {}
    for name, p in inspect.signature(pipe_cls.__call__).parameters.items():
        if name == "self" or name.startswith("_") or name in SERVER_SET:
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if name in MAPPED:
            out[name] = MAPPED[name]
        elif (kind := _scalar(p)) is not None:
            out[name] = kind
    return out


def _coerce(value: Any, kind: type) -> Any:
    """`value` as `kind`, or ValueError. Multipart fields (and lax JSON) send numbers and booleans as strings."""
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool:
            if text in ("true", "1", "false", "0"):
                return text in ("true", "1")
            raise ValueError(value)
        value = int(text) if kind is int else float(text)
    if isinstance(value, bool) != (kind is bool):
        raise ValueError(value)
    if kind is float and isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > MAX_FLOAT:
            raise ValueError(value)
        return float(value)
    if kind is int and isinstance(value, int) and abs(value) > MAX_INT:
        raise ValueError(value)
    if isinstance(value, kind):
        return value
    raise ValueError(value)


def check_call_args(asked: dict[str, Any], params: dict[str, type], pipeline: str,
                    own: Iterable[str] = ()) -> dict[str, Any]:
    """The call arguments a request asks for (`asked`: the MAPPED fields it set and the parameters outside the Images
    API it named), typed for the pipeline's __call__ (`params`, from call_params); BadRequest naming the first the
    pipeline cannot take, with the ones it can and the server's `own` (the Images API's fields)."""
    out: dict[str, Any] = {}
    for name, value in asked.items():
        if name not in params:
            accepted = f"accepted: {', '.join(sorted(params)) or 'none'}"
            if mine := sorted(set(own) - set(MAPPED)):
                accepted += f"; and the server's own: {', '.join(mine)}"
            if name in SERVER_SET:
                raise BadRequest(f"unsupported parameter '{name}' for {pipeline}: the server sets it "
                                 f"{SERVER_SET[name]}; {accepted}", name)
            raise BadRequest(f"unsupported parameter '{name}' for {pipeline}; {accepted}", name)
        try:
            out[name] = _coerce(value, params[name])
        except (ValueError, TypeError, OverflowError):
            raise BadRequest(f"'{name}' must be {KINDS[params[name]]} for {pipeline}, not {reprlib.repr(value)}",
                             name) from None
    return out


def route_guidance(args: dict[str, Any], target: tuple[str | None, str], pipeline: str) -> dict[str, Any]:
    """The checked call arguments with a request's `guidance_scale` moved to where `target` (guidance_target) says
    the pipeline reads it; BadRequest where nothing reads it (it would be dropped silently), or where the request
    also gives that argument itself (two values for one guidance)."""
    to, why = target
    if "guidance_scale" not in args or to == "guidance_scale":
        return args
    if to is None:
        raise BadRequest(f"'guidance_scale' has no effect on {pipeline}: {why}; leave it out", "guidance_scale")
    if to in args:
        raise BadRequest(f"give 'guidance_scale' or '{to}', not both: {why}", "guidance_scale")
    out = dict(args)
    out[to] = out.pop("guidance_scale")
    return out


def arg_bounds(pipe: Any) -> dict[str, tuple[int, int, str]]:
    """Bounds of call arguments that the loaded pipeline's modules set, with why: `clip_skip` counts layers of its
    CLIP text encoders to skip, and one past what they have (or a negative count) fails inside the pipeline (an
    IndexError, a 500). SDXL and SD3 read the layer before the one clip_skip names, so at most layers - 1."""
    layers = []
    for name in ("text_encoder", "text_encoder_2"):
        n = getattr(getattr(getattr(pipe, name, None), "config", None), "num_hidden_layers", None)
        if isinstance(n, int) and not isinstance(n, bool):
            layers.append(n)
    if not layers:
        return {}
    return {"clip_skip": (0, min(layers) - 1, f"its CLIP text encoder has {min(layers)} layers")}


def check_bounds(args: dict[str, Any], bounds: dict[str, tuple[int, int, str]], pipeline: str) -> None:
    """BadRequest naming the first of `args` (typed by check_call_args) outside its bounds (arg_bounds)."""
    for name, (low, high, why) in bounds.items():
        value = args.get(name)
        if value is not None and not low <= value <= high:
            raise BadRequest(f"'{name}' must be between {low} and {high} for {pipeline} ({why}), not {value}", name)
