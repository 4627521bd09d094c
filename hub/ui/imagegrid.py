"""The Image tab's X/Y/Z plot: up to three axes (seed, steps, guidance, size, negative prompt, prompt S/R, model)
over the tab's own settings, each written as AUTOMATIC1111 writes them (`1-4`, `2, 4, 8`, `1-10 [5]`).

The plot runs as an experiment (hub.lab): its cells go to the hub a few at a time, ordered so that cells of one
shape reach the image server together (it batches them), and the whole plot is kept as a run (the Runs tab and
`hub.lab.load` open it). While it runs, two live bars show the cells done and the current cell's denoising steps;
the labelled grid then shows as one PNG (downloadable), and every cell opens on its own in the gallery under it.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import openai

from hub.lab import plots, runner, store, xyz
from hub.lab.grid import Cell
from hub.ui.clients import Admin
from hub.ui.common import POLL_S, bar_html, model_choices, status_line

LABELS = {label: kind for kind, label in xyz.AXES.items()}
AXIS_CHOICES = ["", *LABELS]
HINT = "e.g. 1-4, or 2, 4, 8, or 1-10 [5]"
CONCURRENCY = 4  # cells under way at once: enough for the image server to batch cells of one shape
PlotOut = tuple[Any, Any, Any]  # the progress bars, the grid picture, the cells gallery


class PlotForm(NamedTuple):
    """The plot's inputs, in the tab's settings column: three (axis, values) pairs and its buttons."""

    axes: list[Any]
    make: gr.Button
    stop: gr.Button


class PlotView(NamedTuple):
    """The plot's outputs, in the tab's results column (hidden until a plot is made)."""

    box: gr.Group
    bars: gr.HTML
    picture: gr.Image
    cells: gr.Gallery


def form() -> PlotForm:
    """The X/Y/Z plot accordion of the settings column."""
    with gr.Accordion("X/Y/Z plot", open=False, elem_id="hub-plot"):
        axes = []
        for name in ("X", "Y", "Z"):
            with gr.Row():
                kind = gr.Dropdown(AXIS_CHOICES, value="", label=f"{name} axis", min_width=120, scale=1,
                                   elem_id=f"hub-plot-{name.lower()}-kind")
                values = gr.Textbox(label=f"{name} values", placeholder=HINT, min_width=160, scale=2,
                                    elem_id=f"hub-plot-{name.lower()}-values")
            axes += [kind, values]
        with gr.Row():
            make = gr.Button("make grid", variant="primary", elem_id="hub-plot-make", min_width=90)
            stop = gr.Button("stop", variant="stop", elem_id="hub-plot-stop", min_width=70)
    return PlotForm(axes, make, stop)


def view() -> PlotView:
    """The plot's bars, labelled grid and cells, for the results column."""
    with gr.Group(visible=False, elem_id="hub-plot-view") as box:
        bars = gr.HTML("", elem_id="hub-plot-progress", padding=True)
        picture = gr.Image(label="X/Y/Z plot", type="pil", format="png", interactive=False,
                           buttons=["download", "fullscreen"], elem_id="hub-plot-grid")
        cells = gr.Gallery(label="cells (click one to open it)", columns=6, height=220, format="png",
                           object_fit="contain", buttons=["download", "fullscreen"], elem_id="hub-plot-cells")
    return PlotView(box, bars, picture, cells)


def wire(client: openai.OpenAI, admin: Admin, runs_root: Path | None, settings: dict[str, Any], f: PlotForm,
         v: PlotView) -> None:
    """The plot's events: `settings` holds the tab's model, prompt, negative, size, steps, guidance, seed and LoRA
    components, which give every cell's base settings (a picked LoRA adapter: its model id, `<model>:<adapter>`)."""
    def go(model, prompt, negative, size, steps, guidance, seed, lora, *axis_rows) -> Iterator[PlotOut]:
        if model and lora and lora != "none":
            model = f"{model}:{lora}"
        yield from make_plot(client, admin, runs_root, model, prompt, negative, size, steps, guidance, seed,
                             list(axis_rows))

    keys = ("model", "prompt", "negative", "size", "steps", "guidance", "seed", "lora")
    inputs = [settings[k] for k in keys] + f.axes
    shown = f.make.click(lambda: gr.Group(visible=True), None, v.box, queue=False)
    ev = shown.then(go, inputs, [v.bars, v.picture, v.cells], concurrency_limit=1)
    f.stop.click(lambda: gr.HTML("stopped: the cells that ended are kept in the run"), None, v.bars,
                 cancels=[ev], queue=False)


def progress_html(done: int, total: int, errors: int, step: tuple[int, int] | None, note: str) -> str:
    """The plot's live bars: cells done of all, and the denoising steps of the cell under way."""
    cells = f"cell {min(done + 1, total)} of {total}" if done < total else f"{total} of {total} cells"
    parts = [bar_html(cells + (f", {errors} failed" if errors else ""), done, total, "cells done",
                      "warm" if errors else "ok")]
    if step is not None and step[1]:
        parts.append(bar_html(f"this cell: step {step[0]}/{step[1]}", step[0], step[1], "denoising steps"))
    if note:
        parts.append(f'<div class="hub-status">{html.escape(note)}</div>')
    return "".join(parts)


def make_plot(client: openai.OpenAI, admin: Admin, runs_root: Path | None, model: str | None, prompt: str,
              negative: str = "", size: str | None = None, steps: float | None = None,
              guidance: float | None = None, seed: float | None = -1, axis_rows: list[Any] | None = None,
              poll: float = POLL_S) -> Iterator[PlotOut]:
    """Run an X/Y/Z plot over the form's settings; yields (progress bars, grid picture, cells gallery)."""
    if not model:
        raise gr.Error("pick an image model first (register one with type = \"image\" in models.toml)")
    rows = axis_rows or []
    pairs = [(LABELS.get(rows[i] or "", rows[i] or None), rows[i + 1] or "") for i in range(0, len(rows), 2)]
    if not any(k or v.strip() for k, v in pairs):
        raise gr.Error("pick at least one axis and write its values, e.g. X axis: seed, values: 1-4")
    for k, v in pairs:
        if k and not v.strip():
            raise gr.Error(f"the {xyz.AXES.get(k, k)} axis has no values: write some ({HINT}) or clear the axis")
        if v.strip() and not k:
            raise gr.Error(f"values {v.strip()[:40]!r} have no axis: pick one next to them")
    try:
        models = model_choices(client, adapters=True).get("image") if any(k == "model" for k, _ in pairs) else None
        axes = plots.parse_axes(pairs, models)
        grid = plots.plot_grid(axes, model=model, prompt=prompt or "", negative=negative or "",
                               seed=int(seed) if seed is not None else -1, steps=int(steps) if steps else None,
                               guidance=float(guidance) if guidance else None, size=size or None)
    except ValueError as err:
        raise gr.Error(str(err)) from None

    stop = threading.Event()
    state: dict[str, Any] = {"done": 0, "errors": 0, "step": None, "run": None, "error": None}

    def on_cell(row: dict[str, Any]) -> None:
        state["done"] += 1
        state["errors"] += bool(row.get("error"))
        state["step"] = None

    def on_step(cell: Cell, k: int, n: int) -> None:
        state["step"] = (k, n)

    def work() -> None:
        try:
            state["run"] = runner.run(grid, client=client, name=f"plot {model}", concurrency=CONCURRENCY,
                                      progress=False, root=str(runs_root) if runs_root else None, stop=stop,
                                      on_cell=on_cell, on_step=on_step)
        except BaseException as err:  # shown below as gr.Error
            state["error"] = err

    thread = threading.Thread(target=work, name="ui-plot", daemon=True)
    t0 = time.monotonic()
    thread.start()
    try:
        while thread.is_alive():
            thread.join(poll)
            note = ""
            if state["done"] == 0 and state["step"] is None:
                note = status_line(model, admin.entry(model), time.monotonic() - t0, "generating with")
            yield progress_html(state["done"], grid.size, state["errors"], state["step"], note), gr.skip(), gr.skip()
    except GeneratorExit:
        stop.set()  # stop pressed: the cells under way end and are kept, the run is marked interrupted
        raise
    if state["error"] is not None:
        raise gr.Error(f"the plot failed: {type(state['error']).__name__}: {state['error']}")
    run: store.Run = state["run"]
    took = time.monotonic() - t0
    picture = plots.draw(run)
    axes = plots.axes_of(run)
    gallery = [(img, plots.cell_label(axes, row)) for _, row in run.table.iterrows()
               if (img := run.image(row)) is not None]
    ok = grid.size - run.manifest.errors
    note = f"{ok} image(s) in {took:.1f}s ({ok / took:.2f} images/s), kept as run {run.id}"
    if run.manifest.errors:
        first = next((r["error"] for r in run.rows().values() if r.get("error")), "")
        note += f"; {run.manifest.errors} cell(s) failed: {first}"
    yield progress_html(grid.size, grid.size, run.manifest.errors, None, note), picture, gallery
