"""What the web app's tabs share: errors as gr.Error, the waiting status line, the model pickers and their notes.

Every handler streams: while a blocking call runs (a cold model starting, an image being made) it yields a status
line with the elapsed time, polling /hub/models for the model's state. Errors become gr.Error in the handlers only.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import gradio as gr
import openai

from hub.downloads.status import describe_download
from hub.ui.clients import SDK_ERRORS, Admin, AdminError, error_message

T = TypeVar("T")
POLL_S = 0.5


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
    if isinstance(err, SDK_ERRORS):  # the transport under the SDK: a stream cut mid-answer
        return gr.Error(f"the connection to {hub} broke mid-answer ({type(err).__name__}: {err}): the answer above "
                        "is incomplete; try again, and see `hub logs <model>` if it happens again")
    return gr.Error(f"{type(err).__name__}: {err}")


def status_line(model: str, state: str | dict[str, Any] | None, elapsed: float, doing: str) -> str:
    """What a person sees while waiting: the model downloading (with its progress), starting, stopping (swap) or
    busy, with the seconds so far. `state`: the model's state, or its /hub/models entry."""
    entry = state if isinstance(state, dict) else {}
    state = entry.get("state") if isinstance(state, dict) else state
    if state == "downloading":
        job = entry.get("download")
        return f"downloading {model}: {describe_download(job) if job else 'checking what to download'}... " \
               f"{elapsed:.0f}s"
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
            yield status_line(model, admin.entry(model), time.monotonic() - t0, doing)
    except GeneratorExit:
        abandoned.set()
        if done.is_set() and hasattr(box.get("value"), "close"):
            box["value"].close()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---- bars ----

def bar_html(label: str, done: float, total: float, name: str, level: str = "ok") -> str:
    """A labelled progress bar (the Models tab's memory and downloads, the image grid's cells and steps), with its ARIA
    values; the label and name are text, escaped."""
    pct = min(100.0, 100.0 * done / total) if total else 0.0
    label, name = html.escape(label), html.escape(name)  # gr.HTML renders raw HTML: a label may quote a server
    return (f'<div class="hub-budget"><div class="hub-budget-label">{label}</div>'
            f'<div class="hub-bar" role="progressbar" aria-valuemin="0" aria-valuemax="{total:.12g}" '
            f'aria-valuenow="{done:.12g}" aria-label="{name}"><div class="hub-bar-fill {level}" '
            f'style="width:{pct:.1f}%"></div></div></div>')


# ---- pickers ----

def model_choices(client: openai.OpenAI, adapters: bool = False) -> dict[str, list[str]]:
    """Registered model ids by type ("text", "image", "embedding", ...) from /v1/models. An image model's LoRA
    adapters (`<model>:<name>`, entries with a `parent`) are left out unless `adapters`: the Image tab offers them
    in its own picker, beside their model."""
    try:
        models = client.models.list().data
    except SDK_ERRORS as err:
        raise ui_error(err) from None
    out: dict[str, list[str]] = {"text": [], "image": []}
    for m in models:
        kind = getattr(m, "type", None) or (m.model_extra or {}).get("type") or "text"
        if kind == "image" and not adapters and (m.model_extra or {}).get("parent"):
            continue
        out.setdefault(kind, []).append(m.id)
    return out


def model_note(model: str | None, notes: dict[str, str] | None = None) -> str:
    """The note shown under a model picker: that model's registry `description` ("" for none)."""
    return (notes or {}).get(model or "", "")


def note_update(model: str | None, notes: dict[str, str] | None = None) -> Any:
    """The picker's note for `model`, hidden when the model has no description."""
    text = model_note(model, notes)
    return gr.Markdown(text, visible=bool(text))
