"""The Image tab: generate, edit (inpaint where painted), edit the last result again, this session's history, and the
picked model's note. Requests stream: previews and the step counter show while the model works, and stop ends the
job at the engine. The form starts from the picked model's own defaults and limits (its /v1/models entry).

LoRA adapters: the model picker lists base models only; the LoRA picker offers the picked model's adapters (its
entry's `loras`) and the scale starts at the adapter's registry scale. Generations and edits send them as `lora` and
`lora_scale`; an X/Y/Z plot runs on the adapter's model id (`<model>:<adapter>`, at its registry scale), and its model
axis takes adapter ids too."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import httpx
import openai
from PIL import Image, ImageChops

from hub.ui import imagegrid
from hub.ui.clients import SDK_ERRORS, Admin, AdminError
from hub.ui.common import POLL_S, note_update, ui_error, wait_for
from hub.ui.imagestream import ImageStream, open_stream, step_line

SIZES = ["64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024", "1024x768", "768x1024"]
FALLBACK = {"default_size": "512x512", "default_steps": 20, "max_size": 2048, "max_n": 4}  # engines that say nothing
HISTORY_MAX = 48
NO_LORA = "none"

Picture = tuple[Image.Image, str]
ImageOut = tuple[str, Any, Any, Any]  # status, results gallery, session history, last result


class ImageTab(NamedTuple):
    """What the app fills in on page load: the image-model picker and the note under it."""

    model: gr.Dropdown
    note: gr.Markdown


def build(client: openai.OpenAI, admin: Admin, notes: dict[str, str] | None = None,
          runs_root: Path | None = None) -> ImageTab:
    """The Image tab's components and events (inside the app's Blocks); X/Y/Z plots are kept as runs under
    `runs_root` (None: hub.lab's default)."""
    history = gr.State([])
    last = gr.State(None)
    with gr.Tab("Image", id="image"), gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            model = gr.Dropdown(label="image model", choices=[], elem_id="hub-image-model")
            note = gr.Markdown("", visible=False, elem_classes=["hub-note"], elem_id="hub-image-note")
            prompt = gr.Textbox(label="prompt", lines=3, elem_id="hub-prompt")
            negative = gr.Textbox(label="negative prompt", lines=1)
            with gr.Row():
                size = gr.Dropdown(SIZES, value="512x512", label="size", allow_custom_value=True, min_width=110,
                                   elem_id="hub-size")
                n = gr.Slider(1, 4, value=1, step=1, label="n", min_width=110)
            with gr.Row():
                steps = gr.Slider(1, 100, value=20, step=1, label="steps", min_width=110, elem_id="hub-steps")
                guidance = gr.Slider(0.0, 20.0, value=0.0, step=0.5, label="guidance", info="0: the model's own",
                                     min_width=110)
            seed = gr.Number(-1, label="seed (-1: random)", precision=0)
            with gr.Row():
                lora = gr.Dropdown([NO_LORA], value=NO_LORA, label="LoRA", visible=False, min_width=110,
                                   elem_id="hub-lora")
                lora_scale = gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label="LoRA scale", visible=False,
                                       min_width=110, elem_id="hub-lora-scale")
            with gr.Row():
                generate = gr.Button("generate", variant="primary", elem_id="hub-generate", min_width=90)
                stop = gr.Button("stop", variant="stop", elem_id="hub-image-stop", min_width=70)
            plot_form = imagegrid.form()
        with gr.Column(scale=2, min_width=280):
            status = gr.Markdown("", elem_classes=["hub-status"], elem_id="hub-image-status")
            results = gr.Gallery(label="results", columns=2, height=360, format="png", object_fit="contain",
                                 buttons=["download", "fullscreen"], elem_id="hub-results")
            plot_view = imagegrid.view()
            with gr.Accordion("edit", open=True):
                editor = gr.ImageEditor(label="image to edit (paint to mask: only painted parts change)",
                                        type="pil", image_mode="RGBA", height=360, elem_id="hub-editor",
                                        brush=gr.Brush(colors=["#ffb000"], color_mode="fixed"), format="png")
                instruction = gr.Textbox(label="instruction", placeholder="e.g. make the sky red",
                                         elem_id="hub-instruction")
                with gr.Row():
                    edit = gr.Button("edit", variant="primary", elem_id="hub-edit", min_width=90)
                    again = gr.Button("edit again (use last result)", elem_id="hub-edit-again", min_width=90)
            session = gr.Gallery(label="this session's images", columns=4, height=200, format="png",
                                 buttons=["download", "fullscreen"], elem_id="hub-history")

    imagegrid.wire(client, admin, runs_root, {"model": model, "prompt": prompt, "negative": negative, "size": size,
                                              "steps": steps, "guidance": guidance, "seed": seed, "lora": lora},
                   plot_form, plot_view)
    model.change(lambda m: note_update(m, notes), model, note)
    def on_model(m: str | None) -> tuple[Any, ...]:
        opts = image_options(client, m)
        return (*form_defaults(opts), *lora_form(opts))

    model.change(on_model, model, [size, steps, n, guidance, lora, lora_scale], queue=False)
    lora.change(lambda m, name: lora_default_scale(client, m, name), [model, lora], lora_scale, queue=False)

    def gen(picked, p, neg, sz, st, gd, sd, count, hist, lo, ls) -> Iterator[ImageOut]:
        yield from generate_images(client, admin, picked, p, neg, sz, st, gd, sd, count, hist, lora=lo, lora_scale=ls)

    def edt(picked, ed, instr, st, sd, count, hist, lo, ls) -> Iterator[ImageOut]:
        yield from edit_image(client, admin, picked, ed, instr, st, sd, count, hist, lora=lo, lora_scale=ls)

    outs = [status, results, history, last]
    ev1 = generate.click(gen, [model, prompt, negative, size, steps, guidance, seed, n, history, lora, lora_scale],
                         outs, concurrency_limit=2)
    ev1.then(lambda hist: hist, history, session, queue=False)
    ev2 = edit.click(edt, [model, editor, instruction, steps, seed, n, history, lora, lora_scale], outs,
                     concurrency_limit=2)
    ev2.then(lambda hist: hist, history, session, queue=False)
    stop.click(lambda: "stopped", None, status, cancels=[ev1, ev2], queue=False)
    again.click(edit_again, last, editor, queue=False)
    return ImageTab(model, note)


# ---- the form ----

def image_options(client: openai.OpenAI, model: str | None) -> dict[str, Any]:
    """An image model's defaults and limits from its /v1/models entry (the engine's `image` field), else FALLBACK;
    `loras`: the names of its LoRA adapters (its entry lists their ids, `<model>:<name>`)."""
    if not model:
        return {**FALLBACK, "loras": []}
    try:
        extra = client.models.retrieve(model).model_extra or {}
    except openai.OpenAIError:
        return {**FALLBACK, "loras": []}
    loras = [i[len(model) + 1:] for i in extra.get("loras") or [] if i.startswith(model + ":")]
    return {**FALLBACK, **(extra.get("image") or {}), "loras": loras}


def form_defaults(opts: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """The size picker (sizes within the model's max_size, its default first), steps, n and guidance for a model
    (guidance left as it is where the model has no default of its own)."""
    limit = int(opts["max_size"])
    fits = [s for s in SIZES if max(int(x) for x in s.split("x")) <= limit]
    default = str(opts["default_size"])
    sizes = [default, *(s for s in fits if s != default)]
    return (gr.Dropdown(choices=sizes, value=default),
            gr.Slider(value=int(opts["default_steps"])),
            gr.Slider(maximum=max(1, int(opts["max_n"])), value=1),
            gr.Slider(value=float(g)) if (g := opts.get("default_guidance")) is not None else gr.skip())


def lora_form(opts: dict[str, Any]) -> tuple[Any, Any]:
    """The LoRA picker (none, then the model's adapters) and its scale, shown only for a model with adapters."""
    names = list(opts.get("loras") or [])
    return (gr.Dropdown(choices=[NO_LORA, *names], value=NO_LORA, visible=bool(names)),
            gr.Slider(value=1.0, visible=bool(names)))


def lora_default_scale(client: openai.OpenAI, model: str | None, lora: str | None) -> Any:
    """The scale slider at the picked adapter's registry scale (its /v1/models entry), left as it is otherwise."""
    if not model or not picked_lora(lora):
        return gr.skip()
    try:
        extra = client.models.retrieve(f"{model}:{lora}").model_extra or {}
    except openai.OpenAIError:
        return gr.skip()
    scale = (extra.get("lora") or {}).get("scale")
    return gr.Slider(value=float(scale)) if isinstance(scale, int | float) else gr.skip()


def picked_lora(lora: str | None) -> str | None:
    """The adapter picked in the LoRA dropdown (None: none)."""
    return lora if lora and lora != NO_LORA else None


# ---- handlers ----

def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _extras(negative: str, steps: float | None, guidance: float | None, seed: float | None) -> dict[str, Any]:
    """The Diffusers engine's extensions of the Images API, sent as the openai client's extra_body."""
    extra: dict[str, Any] = {}
    if negative and negative.strip():
        extra["negative_prompt"] = negative.strip()
    if steps:
        extra["num_inference_steps"] = int(steps)
    if guidance:  # 0: none sent, the model's own (a pipeline without guidance_scale refuses it with a 400)
        extra["guidance_scale"] = float(guidance)
    if seed is not None and seed >= 0:
        extra["seed"] = int(seed)
    return extra


def _lora_extras(lora: str | None, scale: float | None) -> dict[str, Any]:
    """The adapter and its scale as the image server takes them (nothing when no adapter is picked)."""
    if not picked_lora(lora):
        return {}
    return {"lora": lora, **({"lora_scale": float(scale)} if scale is not None else {})}


def _remember(history: list[Picture] | None, new: list[Picture]) -> list[Picture]:
    return [*new, *(history or [])][:HISTORY_MAX]


def generate_images(client: openai.OpenAI, admin: Admin, model: str | None, prompt: str, negative: str = "",
                    size: str = "512x512", steps: float | None = None, guidance: float | None = None,
                    seed: float | None = None, n: float = 1, history: list[Picture] | None = None,
                    lora: str | None = None, lora_scale: float | None = None, poll: float = POLL_S
                    ) -> Iterator[ImageOut]:
    """Generate images; yields (status, results, history, last result), with progress lines while waiting."""
    if not model:
        raise gr.Error("pick an image model first (register one with type = \"image\" in models.toml)")
    if not prompt or not prompt.strip():
        raise gr.Error("write a prompt first")

    body = {"model": model, "prompt": prompt.strip(), "n": int(n), "size": size, "response_format": "b64_json",
            **_extras(negative, steps, guidance, seed), **_lora_extras(lora, lora_scale)}

    def send() -> ImageStream:
        return open_stream(client, "/images/generations", json_body=body)

    images, took = yield from _images_call(send, admin, model, "generating with", poll)
    caption = prompt.strip()[:80]
    pics = [(img, caption) for img in images]
    used = f" with LoRA {lora}" if picked_lora(lora) else ""
    done = f"{len(images)} image(s) from {model}{used} in {took:.1f}s"
    yield done, pics, _remember(history, pics), images[0]


def _images_call(send: Callable[[], ImageStream], admin: Admin, model: str, doing: str,
                 poll: float) -> Generator[tuple[Any, ...], None, tuple[list[Image.Image], float]]:
    """Run a streamed images request: yield (status, previews, skip, skip) rows while the model starts and works;
    return the images and the seconds it took. Closing this generator (stop) closes the stream, which stops the
    job at the engine."""
    t0 = time.monotonic()
    stream = None
    try:
        waiting = wait_for(send, admin, model, doing, poll)
        while True:
            try:
                status = next(waiting)
            except StopIteration as stop:
                stream = stop.value
                break
            yield status, gr.skip(), gr.skip(), gr.skip()
        previews = 0
        for p in stream:
            if p.step is not None:
                yield step_line(model, doing, p), gr.skip(), gr.skip(), gr.skip()
            elif p.preview is not None:
                previews += 1
                yield gr.skip(), [(p.preview, f"preview {previews}")], gr.skip(), gr.skip()
        images = stream.images
    except (*SDK_ERRORS, AdminError, httpx.HTTPError) as err:
        raise ui_error(err) from None
    finally:
        if stream is not None:
            stream.close()
    if not images:
        raise gr.Error(f"{model} returned no images: see `hub logs {model}`")
    return images, time.monotonic() - t0


def mask_from_layers(layers: list[Any] | None, size: tuple[int, int]) -> Image.Image | None:
    """An OpenAI-style mask from the editor's painted layers: transparent where painted (edit there), else opaque.

    None when nothing was painted (the edit then applies to the whole image).
    """
    painted = None
    for layer in layers or []:
        if layer is None:
            continue
        layer = layer if isinstance(layer, Image.Image) else Image.open(layer)
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != size:
            alpha = alpha.resize(size)
        painted = alpha if painted is None else ImageChops.lighter(painted, alpha)
    if painted is None or painted.getbbox() is None:
        return None
    keep = painted.point(lambda a: 0 if a > 0 else 255)
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.putalpha(keep)
    return mask


def _editor_image(value: Any) -> tuple[Image.Image | None, list[Any]]:
    """The background image and painted layers of a gr.ImageEditor value (or a plain image)."""
    if value is None:
        return None, []
    if isinstance(value, Image.Image):
        return value, []
    if isinstance(value, dict):
        bg = value.get("background")
        if bg is None:
            bg = value.get("composite")
        if bg is not None and not isinstance(bg, Image.Image):
            bg = Image.open(bg)
        return bg, list(value.get("layers") or [])
    return Image.open(value), []


def edit_image(client: openai.OpenAI, admin: Admin, model: str | None, editor: Any, instruction: str,
               steps: float | None = None, seed: float | None = None, n: float = 1,
               history: list[Picture] | None = None, lora: str | None = None, lora_scale: float | None = None,
               poll: float = POLL_S) -> Iterator[ImageOut]:
    """Edit the uploaded image (inpaint where the mask is painted); yields (status, results, history, last)."""
    if not model:
        raise gr.Error("pick an image model first")
    image, layers = _editor_image(editor)
    if image is None:
        raise gr.Error("upload an image to edit first (or press 'edit again' after generating one)")
    if not instruction or not instruction.strip():
        raise gr.Error("write an instruction first, e.g. 'make the sky red'")
    image = image.convert("RGB")
    mask = mask_from_layers(layers, image.size)
    files: dict[str, Any] = {"image": ("image.png", _png(image), "image/png")}
    if mask is not None:
        files["mask"] = ("mask.png", _png(mask), "image/png")
    fields = {"model": model, "prompt": instruction.strip(), "n": str(int(n)), "response_format": "b64_json",
              **{k: str(v) for k, v in (_extras("", steps, None, seed) | _lora_extras(lora, lora_scale)).items()}}

    def send() -> ImageStream:
        return open_stream(client, "/images/edits", fields=fields, files=files)

    images, took = yield from _images_call(send, admin, model, "editing with", poll)
    what = "inpainted" if mask is not None else "edited"
    pics = [(img, f"{what}: {instruction.strip()[:70]}") for img in images]
    done = f"{len(images)} image(s) {what} by {model} in {took:.1f}s"
    yield done, pics, _remember(history, pics), images[0]


def edit_again(last: Image.Image | None) -> Image.Image:
    """The last result as the editor's next input."""
    if last is None:
        raise gr.Error("nothing to edit yet: generate or edit an image first")
    return last
