"""The Chat tab: a streamed conversation with a text model, its picker (with the model's note) and the settings.
Images attached to a message go to the model as OpenAI `image_url` parts holding data URIs."""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import openai

from hub.ui.clients import SDK_ERRORS, Admin, AdminError
from hub.ui.common import POLL_S, note_update, ui_error, wait_for

Msg = dict[str, Any]


class ChatTab(NamedTuple):
    """What the app fills in on page load: the text-model picker and the note under it."""

    model: gr.Dropdown
    note: gr.Markdown


def build(client: openai.OpenAI, admin: Admin, notes: dict[str, str] | None = None) -> ChatTab:
    """The Chat tab's components and events (inside the app's Blocks)."""
    with gr.Tab("Chat", id="chat"), gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            chatbot = gr.Chatbot(label="chat", height=460, elem_id="hub-chat", buttons=["copy"],
                                 feedback_options=None, placeholder="pick a model, type below, press Enter")
            with gr.Row():
                message = gr.MultimodalTextbox(placeholder="message (Enter sends); attach images with the clip",
                                               show_label=False, scale=5, min_width=180, elem_id="hub-message",
                                               autofocus=True, file_types=["image"], file_count="multiple",
                                               submit_btn=False)
                send = gr.Button("send", variant="primary", scale=1, min_width=70, elem_id="hub-send")
            with gr.Row():
                stop = gr.Button("stop", variant="stop", min_width=70, elem_id="hub-stop")
                clear = gr.Button("clear", variant="secondary", min_width=70, elem_id="hub-clear")
        with gr.Column(scale=1, min_width=240):
            model = gr.Dropdown(label="text model", choices=[], elem_id="hub-chat-model")
            note = gr.Markdown("", visible=False, elem_classes=["hub-note"], elem_id="hub-chat-note")
            system = gr.Textbox(label="system prompt", lines=3, placeholder="optional")
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature")
            max_tokens = gr.Slider(16, 4096, value=512, step=16, label="max tokens")

    model.change(lambda m: note_update(m, notes), model, note)

    def reply(picked: str, hist: list, sys_prompt: str, temp: float, max_tok: float) -> Iterator[list]:
        yield from chat_reply(client, admin, picked, hist, sys_prompt, temp, int(max_tok))

    chat_args = dict(fn=reply, inputs=[model, chatbot, system, temperature, max_tokens], outputs=chatbot)
    ev1 = message.submit(add_user_message, [message, chatbot], [message, chatbot], queue=False).then(**chat_args)
    ev2 = send.click(add_user_message, [message, chatbot], [message, chatbot], queue=False).then(**chat_args)
    stop.click(None, None, None, cancels=[ev1, ev2])
    clear.click(lambda: ([], None), None, [chatbot, message], cancels=[ev1, ev2])
    return ChatTab(model, note)


# ---- handlers ----

def _text(content: Any) -> str:
    """Plain text of a chat message's content (a string or Gradio's list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list | tuple):
        return "".join(_text(p) for p in content)
    return ""


def add_user_message(message: str | dict[str, Any] | None, history: list[Msg] | None) -> tuple[None, list[Msg]]:
    """Append the typed message (text, or the multimodal box's {"text", "files"}) to the history; clear the box."""
    if isinstance(message, dict):
        text, files = str(message.get("text") or ""), [str(f) for f in message.get("files") or []]
    else:
        text, files = message or "", []
    if not text.strip() and not files:
        raise gr.Error("type a message first")
    content: Any = [*([text] if text.strip() else []), *({"path": f} for f in files)] if files else text
    return None, [*(history or []), {"role": "user", "content": content}]


def _files(content: Any) -> list[str]:
    """Paths of the files in a chat message's content (Gradio's parts)."""
    if isinstance(content, dict):
        f = content.get("file") if content.get("type") == "file" else content
        return [str(f["path"])] if isinstance(f, dict) and f.get("path") else []
    if isinstance(content, list | tuple):
        return [p for part in content for p in _files(part)]
    return []


def data_uri(path: str) -> str:
    """An image file as a data: URI."""
    mime = mimetypes.guess_type(path)[0] or "image/png"
    if not mime.startswith("image/"):
        raise gr.Error(f"{Path(path).name} is not an image: only images can be attached")
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def openai_content(content: Any) -> str | list[dict[str, Any]]:
    """A chat message's content for the API: plain text, or text and image_url parts when it carries images."""
    text, files = _text(content), _files(content)
    if not files:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return parts + [{"type": "image_url", "image_url": {"url": data_uri(f)}} for f in files]


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
    messages += [{"role": m["role"], "content": openai_content(m["content"]) if m["role"] == "user"
                  else _text(m["content"])} for m in history
                 if m["role"] in ("user", "assistant") and not (m.get("metadata") or {}).get("title")]
    with_images = any(isinstance(m["content"], list) for m in messages)
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
    except openai.BadRequestError as err:
        if not with_images:
            raise ui_error(err) from None
        raise gr.Error(f"{model} refused the images: {ui_error(err).message} (pick a model that takes images, such "
                       "as a vision-language model, or clear the chat and send text only)") from None
    except (*SDK_ERRORS, AdminError) as err:
        raise ui_error(err) from None
    finally:
        if stream is not None:
            stream.close()
