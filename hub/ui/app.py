"""The Blocks of the web app, built by a factory over the two clients so tests can build it against any hub.

Each tab is its own module (chat, images, models) that builds its components, wires its events and holds its
handlers; this module composes them and fills the model pickers once the page loads.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import openai

from hub.ui import chat, images, models
from hub.ui.clients import Admin
from hub.ui.common import image_note, model_choices


def build_ui(client: openai.OpenAI, admin: Admin, notes: dict[str, str] | None = None) -> gr.Blocks:
    """The web app: Chat, Image and Models tabs over the hub's /v1 (openai client) and /hub (admin client).

    `notes` maps image model ids to a note shown when that model is picked (the demo model's output is noise).
    """
    with gr.Blocks(title="hub", analytics_enabled=False, fill_width=True) as demo:
        gr.Markdown("# hub\none endpoint for text and image models: chat, images, models", elem_id="hub-title")
        chat_model = chat.build(client, admin)
        image_tab = images.build(client, admin, notes)
        admin_model = models.build(demo, admin)

        def init() -> tuple[Any, ...]:
            kinds = model_choices(client)
            text, image = kinds.get("text", []), kinds.get("image", [])
            every = text + image
            return (gr.Dropdown(choices=text, value=text[0] if text else None),
                    gr.Dropdown(choices=image, value=image[0] if image else None),
                    gr.Dropdown(choices=every, value=every[0] if every else None),
                    image_note(image[0] if image else None, notes))

        demo.load(init, None, [chat_model, image_tab.model, admin_model, image_tab.note])
    demo.queue(default_concurrency_limit=16)
    return demo
