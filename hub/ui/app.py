"""The Blocks of the web app, built by a factory over the two clients so tests can build it against any hub."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
import openai

from hub.ui import handlers as h
from hub.ui.clients import Admin

SIZES = ["64x64", "256x256", "512x512", "768x768", "1024x1024", "1024x768", "768x1024"]
REFRESH_S = 2.0


def build_ui(client: openai.OpenAI, admin: Admin, notes: dict[str, str] | None = None) -> gr.Blocks:
    """The web app: Chat, Image and Models tabs over the hub's /v1 (openai client) and /hub (admin client).

    `notes` maps image model ids to a note shown when that model is picked (the demo model's output is noise).
    """
    with gr.Blocks(title="hub", analytics_enabled=False, fill_width=True) as demo:
        gr.Markdown("# hub\none endpoint for text and image models: chat, images, models", elem_id="hub-title")

        # ---------------- chat ----------------
        with gr.Tab("Chat", id="chat"), gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):
                chatbot = gr.Chatbot(label="chat", height=460, elem_id="hub-chat", buttons=["copy"],
                                     feedback_options=None, placeholder="pick a model, type below, press Enter")
                with gr.Row():
                    message = gr.Textbox(placeholder="message (Enter sends)", show_label=False, scale=5,
                                         min_width=180, elem_id="hub-message", autofocus=True)
                    send = gr.Button("send", variant="primary", scale=1, min_width=70, elem_id="hub-send")
                with gr.Row():
                    stop = gr.Button("stop", variant="stop", min_width=70, elem_id="hub-stop")
                    clear = gr.Button("clear", variant="secondary", min_width=70, elem_id="hub-clear")
            with gr.Column(scale=1, min_width=240):
                chat_model = gr.Dropdown(label="text model", choices=[], elem_id="hub-chat-model")
                system = gr.Textbox(label="system prompt", lines=3, placeholder="optional")
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature")
                max_tokens = gr.Slider(16, 4096, value=512, step=16, label="max tokens")

        # ---------------- image ----------------
        history = gr.State([])
        last = gr.State(None)
        with gr.Tab("Image", id="image"), gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280):
                image_model = gr.Dropdown(label="image model", choices=[], elem_id="hub-image-model")
                note = gr.Markdown("", elem_classes=["hub-note"], elem_id="hub-image-note")
                prompt = gr.Textbox(label="prompt", lines=3, elem_id="hub-prompt")
                negative = gr.Textbox(label="negative prompt", lines=1)
                with gr.Row():
                    size = gr.Dropdown(SIZES, value="512x512", label="size", allow_custom_value=True,
                                       min_width=110)
                    n = gr.Slider(1, 4, value=1, step=1, label="n", min_width=110)
                with gr.Row():
                    steps = gr.Slider(1, 100, value=20, step=1, label="steps", min_width=110)
                    guidance = gr.Slider(0.0, 20.0, value=7.0, step=0.5, label="guidance", min_width=110)
                seed = gr.Number(-1, label="seed (-1: random)", precision=0)
                generate = gr.Button("generate", variant="primary", elem_id="hub-generate")
            with gr.Column(scale=2, min_width=280):
                image_status = gr.Markdown("", elem_classes=["hub-status"], elem_id="hub-image-status")
                results = gr.Gallery(label="results", columns=2, height=360, format="png", object_fit="contain",
                                     buttons=["download", "fullscreen"], elem_id="hub-results")
                with gr.Accordion("edit", open=True):
                    editor = gr.ImageEditor(label="image to edit (paint to mask: only painted parts change)",
                                            type="pil", image_mode="RGBA", height=360, elem_id="hub-editor",
                                            brush=gr.Brush(colors=["#ffb000"], color_mode="fixed"),
                                            format="png")
                    instruction = gr.Textbox(label="instruction", placeholder="e.g. make the sky red",
                                             elem_id="hub-instruction")
                    with gr.Row():
                        edit = gr.Button("edit", variant="primary", elem_id="hub-edit", min_width=90)
                        again = gr.Button("edit again (use last result)", elem_id="hub-edit-again",
                                          min_width=90)
                session = gr.Gallery(label="this session's images", columns=4, height=200, format="png",
                                     buttons=["download", "fullscreen"], elem_id="hub-history")

        # ---------------- models ----------------
        with gr.Tab("Models", id="models") as models_tab:
            budget = gr.HTML("", elem_id="hub-budget")
            table = gr.Dataframe(headers=h.COLUMNS, value=[], interactive=False, wrap=True, elem_id="hub-models",
                                 label="models (refreshed every few seconds)")
            with gr.Row():
                admin_model = gr.Dropdown(label="model", choices=[], scale=2, min_width=160,
                                          elem_id="hub-admin-model")
                load = gr.Button("load", variant="primary", min_width=80, elem_id="hub-load")
                unload = gr.Button("unload", variant="secondary", min_width=80, elem_id="hub-unload")
            admin_status = gr.Markdown("", elem_classes=["hub-status"], elem_id="hub-admin-status")
            logs = gr.Textbox(label="log tail of a failed model", lines=10, max_lines=20, interactive=False,
                              elem_id="hub-logs")
            timer = gr.Timer(REFRESH_S)

        # ---------------- events ----------------
        def init() -> tuple[Any, Any, Any, str]:
            kinds = h.model_choices(client)
            text, image = kinds.get("text", []), kinds.get("image", [])
            every = text + image
            return (gr.Dropdown(choices=text, value=text[0] if text else None),
                    gr.Dropdown(choices=image, value=image[0] if image else None),
                    gr.Dropdown(choices=every, value=every[0] if every else None),
                    h.image_note(image[0] if image else None, notes))

        demo.load(init, None, [chat_model, image_model, admin_model, note])
        image_model.change(lambda m: h.image_note(m, notes), image_model, note)

        def reply(model: str, hist: list, sys_prompt: str, temp: float, max_tok: float) -> Iterator[list]:
            yield from h.chat_reply(client, admin, model, hist, sys_prompt, temp, int(max_tok))

        chat_args = dict(fn=reply, inputs=[chat_model, chatbot, system, temperature, max_tokens], outputs=chatbot)
        ev1 = message.submit(h.add_user_message, [message, chatbot], [message, chatbot], queue=False).then(**chat_args)
        ev2 = send.click(h.add_user_message, [message, chatbot], [message, chatbot], queue=False).then(**chat_args)
        stop.click(None, None, None, cancels=[ev1, ev2])
        clear.click(lambda: ([], ""), None, [chatbot, message], cancels=[ev1, ev2])

        def gen(model, p, neg, sz, st, gd, sd, count, hist) -> Iterator[tuple]:
            yield from h.generate_images(client, admin, model, p, neg, sz, st, gd, sd, count, hist)

        def edt(model, ed, instr, st, sd, count, hist) -> Iterator[tuple]:
            yield from h.edit_image(client, admin, model, ed, instr, st, sd, count, hist)

        image_outs = [image_status, results, history, last]
        generate.click(gen, [image_model, prompt, negative, size, steps, guidance, seed, n, history], image_outs,
                       concurrency_limit=2).then(lambda hist: hist, history, session, queue=False)
        edit.click(edt, [image_model, editor, instruction, steps, seed, n, history], image_outs,
                   concurrency_limit=2).then(lambda hist: hist, history, session, queue=False)
        again.click(h.edit_again, last, editor, queue=False)

        def refresh(selected: str | None):
            return h.refresh_models(admin, selected)

        refresh_outs = [table, budget, logs]
        timer.tick(refresh, admin_model, refresh_outs, show_progress="hidden", queue=False)
        models_tab.select(refresh, admin_model, refresh_outs, show_progress="hidden")
        demo.load(refresh, admin_model, refresh_outs, show_progress="hidden")

        def do_load(model: str | None) -> Iterator[str]:
            yield from h.load_model(admin, model)

        load.click(do_load, admin_model, admin_status).then(refresh, admin_model, refresh_outs)
        unload.click(lambda m: h.unload_model(admin, m), admin_model, admin_status).then(
            refresh, admin_model, refresh_outs)
    demo.queue(default_concurrency_limit=16)
    return demo
