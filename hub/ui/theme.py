"""The terminal look: a Gradio theme (dark, monospace, green text, amber accents) and a little CSS.

The same dark values are set for Gradio's light and dark modes, so the page looks the same whatever the browser
prefers. Text colours keep a contrast ratio of at least 7:1 on the background (WCAG AAA for body text).
"""

from __future__ import annotations

import inspect

import gradio as gr

BG = "#0a0e0a"        # page
PANEL = "#111811"     # blocks
INPUT = "#060906"     # inputs
LINE = "#2b4a2b"      # borders
GREEN = "#4af626"     # text and primary (contrast 13:1 on BG)
GREEN_DIM = "#8fcf84" # secondary text (9:1)
AMBER = "#ffb000"     # accents, labels (10:1)
RED = "#ff6b5b"

MONO = ["ui-monospace", "SFMono-Regular", "JetBrains Mono", "Menlo", "Consolas", "Liberation Mono", "DejaVu Sans Mono",
        "monospace"]


def _both(**values: str) -> dict[str, str]:
    """Each variable for the light and the dark mode alike."""
    known = inspect.signature(gr.themes.Base.set).parameters
    out = {}
    for k, v in values.items():
        out[k] = v
        if k + "_dark" in known:
            out[k + "_dark"] = v
    return out


class Terminal(gr.themes.Base):
    """Dark, monospace, green on black with amber accents."""

    def __init__(self) -> None:
        super().__init__(primary_hue=gr.themes.colors.green, secondary_hue=gr.themes.colors.amber,
                         neutral_hue=gr.themes.colors.gray, radius_size=gr.themes.sizes.radius_none,
                         text_size=gr.themes.sizes.text_md, font=MONO, font_mono=MONO)
        self.set(**_both(
            body_background_fill=BG, body_text_color=GREEN, body_text_color_subdued=GREEN_DIM,
            background_fill_primary=PANEL, background_fill_secondary=BG,
            border_color_primary=LINE, border_color_accent=AMBER, border_color_accent_subdued=LINE,
            color_accent=AMBER, color_accent_soft="#2a2200",
            link_text_color=AMBER, link_text_color_hover=GREEN, link_text_color_visited=AMBER,
            link_text_color_active=GREEN,
            code_background_fill=INPUT,
            block_background_fill=PANEL, block_border_color=LINE, block_label_background_fill=PANEL,
            block_label_text_color=AMBER, block_title_text_color=AMBER, block_label_border_color=LINE,
            block_info_text_color=GREEN_DIM, panel_background_fill=PANEL, panel_border_color=LINE,
            accordion_text_color=AMBER, table_text_color=GREEN, table_border_color=LINE,
            table_even_background_fill=PANEL, table_odd_background_fill=INPUT, table_row_focus="#1d2f1d",
            input_background_fill=INPUT, input_background_fill_focus=INPUT, input_background_fill_hover=INPUT,
            input_border_color=LINE, input_border_color_focus=AMBER, input_border_color_hover=GREEN_DIM,
            input_placeholder_color="#6f9a68",
            checkbox_background_color=INPUT, checkbox_border_color=LINE, checkbox_label_text_color=GREEN,
            checkbox_label_background_fill=PANEL, checkbox_label_background_fill_selected="#1d2f1d",
            checkbox_background_color_selected=GREEN, checkbox_border_color_selected=GREEN,
            slider_color=AMBER, loader_color=AMBER, stat_background_fill="#1d2f1d",
            button_primary_background_fill=GREEN, button_primary_background_fill_hover="#7dff5e",
            button_primary_text_color=BG, button_primary_text_color_hover=BG,
            button_primary_border_color=GREEN, button_primary_border_color_hover="#7dff5e",
            button_secondary_background_fill=PANEL, button_secondary_background_fill_hover="#1d2f1d",
            button_secondary_text_color=AMBER, button_secondary_text_color_hover=AMBER,
            button_secondary_border_color=AMBER, button_secondary_border_color_hover=AMBER,
            button_cancel_background_fill="#2a0e0b", button_cancel_background_fill_hover="#3d1510",
            button_cancel_text_color=RED, button_cancel_text_color_hover=RED,
            button_cancel_border_color=RED, button_cancel_border_color_hover=RED,
            error_background_fill="#2a0e0b", error_border_color=RED, error_text_color=RED, error_icon_color=RED,
        ), button_border_width="1px", block_border_width="1px", input_border_width="1px",
            shadow_drop="none", shadow_drop_lg="none", block_shadow="none", button_primary_shadow="none",
            button_secondary_shadow="none", chatbot_text_size="*text_md")
        # One set() call only: a second one resets background_fill_primary to white (gradio 6.31 reads a
        # misspelt attribute as its fallback).


CSS = f"""
footer {{ display: none !important; }}
.gradio-container {{ width: 100% !important; max-width: 1280px !important; margin: 0 auto !important; }}
#hub-editor canvas, #hub-editor .pixi-target {{ background: {INPUT}; }}
input[type="range"] {{ accent-color: {AMBER}; }}
#hub-title h1 {{ color: {GREEN}; font-size: 1.25rem; margin: 0; letter-spacing: 0.04em; }}
#hub-title h1::before {{ content: "$ "; color: {AMBER}; }}
#hub-title p {{ color: {GREEN_DIM}; margin: 0.2rem 0 0 0; }}
#hub-title h1::after {{ content: "█"; color: {GREEN}; animation: hub-blink 1s steps(1) infinite; margin-left: 0.2em; }}
@keyframes hub-blink {{ 50% {{ opacity: 0; }} }}
@media (prefers-reduced-motion: reduce) {{ #hub-title h1::after {{ animation: none; }} }}
.hub-status {{ color: {AMBER}; min-height: 1.5em; }}
.hub-note {{ border-left: 3px solid {AMBER}; padding-left: 0.6rem; color: {AMBER}; }}
.hub-note strong {{ color: {AMBER}; }}
.hub-compare-head strong {{ color: {AMBER}; }}
.hub-compare-stats p {{ color: {GREEN_DIM} !important; font-size: 0.85rem; }}
button[role="tab"] {{ color: {GREEN_DIM} !important; }}
button[role="tab"][aria-selected="true"] {{ color: {AMBER} !important; border-color: {AMBER} !important; }}
.message.user, .message-row.user-row .message {{ border-color: {AMBER} !important; }}
.hub-budget {{ margin: 0.3rem 0; }}
.hub-budget-label {{ color: {GREEN}; margin-bottom: 0.2rem; }}
.hub-bar {{ height: 0.9rem; border: 1px solid {LINE}; background: {INPUT}; }}
.hub-bar-fill {{ height: 100%; background: {GREEN}; }}
.hub-bar-fill.warm {{ background: {AMBER}; }}
.hub-bar-fill.hot {{ background: {RED}; }}
#hub-logs textarea {{ font-size: 0.8rem; }}
@media (max-width: 640px) {{
  .gradio-container {{ padding: 0.4rem !important; }}
  .tab-container button {{ padding-left: 0.3rem !important; padding-right: 0.3rem !important; font-size: 0.8rem; }}
  #hub-title p {{ font-size: 0.8rem; }}
}}
"""
