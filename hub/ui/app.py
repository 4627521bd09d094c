"""The Blocks of the web app, built by a factory over the two clients so tests can build it against any hub.

Each tab is its own module (chat, images, compare, runs, batches, models) that builds its components, wires its
events and holds its handlers; this module composes them and fills the model pickers once the page loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import openai

from hub.ui import batches, chat, compare, images, models, runs
from hub.ui.clients import Admin
from hub.ui.common import model_choices, note_update


def build_ui(client: openai.OpenAI, admin: Admin, notes: dict[str, str] | None = None,
             runs_root: Path | None = None) -> gr.Blocks:
    """The web app: Chat, Image, Compare, Runs, Batches and Models tabs over the hub's /v1 (openai client) and /hub
    (admin client).

    `notes` maps model ids to a note shown when that model is picked: its registry `description`. Experiment runs
    (X/Y/Z plots, Compare rounds and votes) are kept under `runs_root` (the hub's `<state_dir>/runs`; None:
    hub.lab's default, $HUB_RUNS_DIR ...).
    """
    with gr.Blocks(title="hub", analytics_enabled=False, fill_width=True) as demo:
        gr.Markdown("# hub\none endpoint for every model: chat, images, side by side, runs kept as data",
                    elem_id="hub-title")
        chat_tab = chat.build(client, admin, notes)
        image_tab = images.build(client, admin, notes, runs_root)
        compare_tab = compare.build(client, admin, notes, runs_root)
        runs.build(runs_root)
        batch_model = batches.build(client)
        admin_model = models.build(demo, admin)

        def init() -> tuple[Any, ...]:
            kinds = model_choices(client)
            text, image = kinds.get("text", []), kinds.get("image", [])
            every = [m for ids in kinds.values() for m in ids]  # every kind, embedding and audio models too
            first_text, first_image = text[0] if text else None, image[0] if image else None
            return (gr.Dropdown(choices=text, value=first_text),
                    gr.Dropdown(choices=image, value=first_image),
                    gr.Dropdown(choices=every, value=every[0] if every else None),
                    note_update(first_text, notes), note_update(first_image, notes),
                    gr.Dropdown(choices=text, value=text[:2]), gr.Dropdown(choices=text, value=first_text))

        demo.load(init, None, [chat_tab.model, image_tab.model, admin_model, chat_tab.note, image_tab.note,
                               compare_tab.models, batch_model])
    demo.queue(default_concurrency_limit=16)
    return demo
