"""The web app's event handlers: plain (generator) functions over an openai client and an Admin client.

Every handler streams: while a blocking call runs (a cold model starting, an image being made) it yields a status
line with the elapsed time, polling /hub/models for the model's state. Errors become gr.Error here and only here.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

import gradio as gr
import httpx
import openai
from PIL import Image, ImageChops

from hub.ui import NOISE_NOTE
from hub.ui.clients import Admin, AdminError, error_message

T = TypeVar("T")
POLL_S = 0.5
HISTORY_MAX = 48

Msg = dict[str, Any]
Picture = tuple[Image.Image, str]


# ---- errors and waiting ----

def ui_error(err: BaseException, hub: str = "the hub") -> gr.Error:
    """A gr.Error with an actionable message for anything the clients raise."""
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, openai.APIStatusError):
        return gr.Error(error_message(err.body, err.message))
    if isinstance(err, openai.APITimeoutError):
        return gr.Error(f"{hub} did not answer in time: see the Models tab or `hub logs <model>`")
    if isinstance(err, openai.APIConnectionError):
        return gr.Error(f"cannot reach {hub}: is `hub serve` running?")
    if isinstance(err, AdminError):
        return gr.Error(str(err))
    return gr.Error(f"{type(err).__name__}: {err}")


def status_line(model: str, state: str | None, elapsed: float, doing: str) -> str:
    """What a person sees while waiting: the model starting, stopping (swap) or busy, with the seconds so far."""
    if state in ("stopped", "starting", "failed"):
        return f"starting {model}... {elapsed:.0f}s"
    if state == "stopping":
        return f"waiting for {model} to stop before it starts again... {elapsed:.0f}s"
    return f"{doing} {model}... {elapsed:.0f}s"


def wait_for(call: Callable[[], T], admin: Admin, model: str, doing: str,
             poll: float = POLL_S) -> Generator[str, None, T]:
    """Run `call` in a thread; yield status lines until it returns; return its value (or raise its error).

    If the consumer closes this generator early (Stop), a result that arrives later is closed (streams) and dropped.
    """
    box: dict[str, Any] = {}
    done = threading.Event()
    abandoned = threading.Event()

    def work() -> None:
        try:
            box["value"] = call()
        except BaseException as err:
            box["error"] = err
        finally:
            done.set()
            if abandoned.is_set() and hasattr(box.get("value"), "close"):
                box["value"].close()

    threading.Thread(target=work, name=f"ui-wait-{model}", daemon=True).start()
    t0 = time.monotonic()
    try:
        while not done.wait(poll):
            yield status_line(model, admin.state(model), time.monotonic() - t0, doing)
    except GeneratorExit:
        abandoned.set()
        if done.is_set() and hasattr(box.get("value"), "close"):
            box["value"].close()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---- pickers ----

def model_choices(client: openai.OpenAI) -> dict[str, list[str]]:
    """Registered model ids by type ("text", "image") from /v1/models."""
    try:
        models = client.models.list().data
    except openai.OpenAIError as err:
        raise ui_error(err) from None
    out: dict[str, list[str]] = {"text": [], "image": []}
    for m in models:
        kind = getattr(m, "type", None) or (m.model_extra or {}).get("type") or "text"
        out.setdefault(kind, []).append(m.id)
    return out


def image_note(model: str | None, notes: dict[str, str] | None = None) -> str:
    """The note shown under the image-model picker (the demo model's images are noise)."""
    if not model:
        return ""
    if notes and model in notes:
        return notes[model]
    return NOISE_NOTE.format(model=model) if "tiny-sd" in model else ""


# ---- chat ----

def _text(content: Any) -> str:
    """Plain text of a chat message's content (a string or Gradio's list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list | tuple):
        return "".join(_text(p) for p in content)
    return ""


def add_user_message(message: str, history: list[Msg] | None) -> tuple[str, list[Msg]]:
    """Append the typed message to the history and clear the box."""
    if not message or not message.strip():
        raise gr.Error("type a message first")
    return "", [*(history or []), {"role": "user", "content": message}]


def chat_reply(client: openai.OpenAI, admin: Admin, model: str | None, history: list[Msg] | None,
               system: str = "", temperature: float = 0.7, max_tokens: int = 512,
               poll: float = POLL_S) -> Iterator[list[Msg]]:
    """Stream the assistant's answer to the last user message; yields the history as it grows token by token."""
    if not model:
        raise gr.Error("pick a text model first (the list comes from /v1/models; register one in models.toml)")
    history = list(history or [])
    if not history or history[-1]["role"] != "user":
        raise gr.Error("type a message first")
    messages = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    messages += [{"role": m["role"], "content": _text(m["content"])} for m in history
                 if m["role"] in ("user", "assistant") and not (m.get("metadata") or {}).get("title")]
    reply: Msg = {"role": "assistant", "content": ""}
    history.append(reply)

    def send():
        return client.chat.completions.create(model=model, messages=messages, stream=True,
                                              temperature=float(temperature), max_tokens=int(max_tokens))

    stream = None
    try:
        waiting = wait_for(send, admin, model, "waiting for", poll)
        try:
            while True:
                reply["content"] = next(waiting)
                yield history
        except StopIteration as stop:
            stream = stop.value
        reply["content"] = ""
        for chunk in stream:
            if not chunk.choices:
                continue
            piece = chunk.choices[0].delta.content or ""
            if piece:
                reply["content"] += piece
                yield history
        if not reply["content"]:
            reply["content"] = "(the model returned no text)"
        yield history
    except (openai.OpenAIError, AdminError) as err:
        raise ui_error(err) from None
    finally:
        if stream is not None:
            stream.close()


# ---- images ----

def _decode(item: Any, client: openai.OpenAI) -> Image.Image:
    if getattr(item, "b64_json", None):
        return Image.open(io.BytesIO(base64.b64decode(item.b64_json))).convert("RGB")
    if getattr(item, "url", None):
        headers = {"authorization": f"Bearer {client.api_key}"} if client.api_key else {}
        r = httpx.get(item.url, headers=headers, timeout=60)
        r.raise_for_status()
        return Image.open(io.BytesIO(r.content)).convert("RGB")
    raise gr.Error("the image model answered without image data: see `hub logs <model>`")


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
    if guidance is not None:
        extra["guidance_scale"] = float(guidance)
    if seed is not None and seed >= 0:
        extra["seed"] = int(seed)
    return extra


def _remember(history: list[Picture] | None, new: list[Picture]) -> list[Picture]:
    return [*new, *(history or [])][:HISTORY_MAX]


ImageOut = tuple[str, Any, Any, Any]  # status, results gallery, session history, last result


def generate_images(client: openai.OpenAI, admin: Admin, model: str | None, prompt: str, negative: str = "",
                    size: str = "512x512", steps: float | None = None, guidance: float | None = None,
                    seed: float | None = None, n: float = 1, history: list[Picture] | None = None,
                    poll: float = POLL_S) -> Iterator[ImageOut]:
    """Generate images; yields (status, results, history, last result), with progress lines while waiting."""
    if not model:
        raise gr.Error("pick an image model first (register one with type = \"image\" in models.toml)")
    if not prompt or not prompt.strip():
        raise gr.Error("write a prompt first")

    def send():
        return client.images.generate(model=model, prompt=prompt.strip(), n=int(n), size=size,
                                      response_format="b64_json", extra_body=_extras(negative, steps, guidance, seed))

    images, took = yield from _images_call(send, client, admin, model, "generating with", poll)
    caption = prompt.strip()[:80]
    pics = [(img, caption) for img in images]
    done = f"{len(images)} image(s) from {model} in {took:.1f}s"
    yield done, pics, _remember(history, pics), images[0]


def _images_call(send: Callable[[], Any], client: openai.OpenAI, admin: Admin, model: str, doing: str,
                 poll: float) -> Generator[tuple[Any, ...], None, tuple[list[Image.Image], float]]:
    """Run an images request, yielding (status, skip, skip, skip) rows while it waits; returns the images and the
    seconds it took."""
    t0 = time.monotonic()
    try:
        waiting = wait_for(send, admin, model, doing, poll)
        while True:
            try:
                status = next(waiting)
            except StopIteration as stop:
                resp = stop.value
                break
            yield status, gr.skip(), gr.skip(), gr.skip()
        images = [_decode(d, client) for d in resp.data or []]
    except (openai.OpenAIError, AdminError, httpx.HTTPError) as err:
        raise ui_error(err) from None
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
               history: list[Picture] | None = None, poll: float = POLL_S) -> Iterator[ImageOut]:
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

    def send():
        return client.images.edit(model=model, prompt=instruction.strip(), n=int(n), response_format="b64_json",
                                  extra_body=_extras("", steps, None, seed), **files)

    images, took = yield from _images_call(send, client, admin, model, "editing with", poll)
    what = "inpainted" if mask is not None else "edited"
    pics = [(img, f"{what}: {instruction.strip()[:70]}") for img in images]
    done = f"{len(images)} image(s) {what} by {model} in {took:.1f}s"
    yield done, pics, _remember(history, pics), images[0]


def edit_again(last: Image.Image | None) -> Image.Image:
    """The last result as the editor's next input."""
    if last is None:
        raise gr.Error("nothing to edit yet: generate or edit an image first")
    return last


# ---- models ----

COLUMNS = ["id", "state", "type", "engine", "runtime", "memory", "last used"]  # state early: phones scroll


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    ago = max(0.0, now - ts)
    return f"{ago:.0f}s ago" if ago < 120 else f"{ago / 60:.0f}m ago" if ago < 7200 else f"{ago / 3600:.0f}h ago"


def model_rows(listing: dict[str, Any]) -> list[list[str]]:
    """The Models table: one row per model."""
    now = listing.get("time") or time.time()
    rows = []
    for m in listing.get("data", []):
        mem = m.get("budget_gb") if m.get("budget_gb") is not None else m.get("memory_gb")
        rows.append([m["id"], m["state"], m["type"], m["engine"], m.get("runtime", "-"),
                     f"{mem:g} GB" if mem else "-", _ago(m.get("last_used"), now)])
    return rows


def budget_html(listing: dict[str, Any]) -> str:
    """One bar per host: memory in use over its budget."""
    parts = []
    for b in listing.get("budgets", []):
        used, total = b.get("used_gb") or 0.0, b.get("budget_gb")
        if total:
            pct = min(100.0, 100.0 * used / total)
            level = "hot" if pct >= 90 else "warm" if pct >= 70 else "ok"
            label = f"{b['host']}: {used:g} / {total:g} GB ({pct:.0f}%)"
            bar = (f'<div class="hub-bar" role="progressbar" aria-valuemin="0" aria-valuemax="{total:g}" '
                   f'aria-valuenow="{used:g}" aria-label="memory budget {b["host"]}">'
                   f'<div class="hub-bar-fill {level}" style="width:{pct:.1f}%"></div></div>')
        else:
            label, bar = f"{b['host']}: {used:g} GB in use (no budget set)", ""
        parts.append(f'<div class="hub-budget"><div class="hub-budget-label">memory {label}</div>{bar}</div>')
    return "".join(parts) or '<div class="hub-budget">no hosts</div>'


def failed_logs(admin: Admin, listing: dict[str, Any], selected: str | None) -> str:
    """The log tail of the selected model if it failed, else of the first failed model, else a short note."""
    failed = [m for m in listing.get("data", []) if m["state"] == "failed"]
    pick = next((m for m in failed if m["id"] == selected), failed[0] if failed else None)
    if pick is None:
        return "no failed model: logs of a model that fails to start or crashes show up here"
    try:
        tail = admin.logs(pick["id"])
    except AdminError as err:
        tail = f"(logs unavailable: {err})"
    return f"{pick['id']} failed: {pick.get('reason') or 'no reason given'}\n\n{tail}"


def refresh_models(admin: Admin, selected: str | None = None) -> tuple[list[list[str]], str, str]:
    """The table, the budget bars and the failed model's log tail."""
    try:
        listing = admin.models()
    except AdminError as err:
        raise ui_error(err) from None
    return model_rows(listing), budget_html(listing), failed_logs(admin, listing, selected)


def load_model(admin: Admin, model: str | None, poll: float = POLL_S) -> Iterator[str]:
    """Start a model; yields 'starting <model>... Ns' until it is ready, then its state."""
    if not model:
        raise gr.Error("pick a model to load")
    try:
        waiting = wait_for(lambda: admin.load(model), admin, model, "loading", poll)
        try:
            while True:
                yield next(waiting)
        except StopIteration as stop:
            entry = stop.value
    except AdminError as err:
        raise gr.Error(f"{err} (the log tail is below)") from None
    yield f"{model}: {entry['state']}"


def unload_model(admin: Admin, model: str | None) -> str:
    """Stop a model."""
    if not model:
        raise gr.Error("pick a model to unload")
    try:
        entry = admin.unload(model)
    except AdminError as err:
        raise ui_error(err) from None
    return f"{model}: {entry['state']}"
