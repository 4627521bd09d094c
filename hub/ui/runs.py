"""The Runs tab: every experiment run kept under the hub's runs dir (grids from notebooks and scripts, X/Y/Z plots,
Compare rounds), newest first; open one to see its table, its images (a plot's labelled grid first) and the line
that loads it in a notebook."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from hub.lab import arena, plots, store

LIST_COLUMNS = ["id", "kind", "name", "status", "created", "cells", "errors", "models"]
HIDDEN = {"cell", "started_at", "recorded_at", "image", "messages"}  # kept in the run, too wide for the page
MAX_TEXT = 160  # characters of an answer shown per cell
MAX_ROWS = 2000  # rows of a run's table shown on the page (the run and its Parquet file keep them all)
MAX_IMAGES = 120  # images of a run shown in its gallery, each opened and sent to the page


def build(runs_root: Path | None) -> None:
    """The Runs tab's components and events (inside the app's Blocks)."""
    with gr.Tab("Runs", id="runs") as tab:
        with gr.Row():
            picked = gr.Dropdown(label="run", choices=[], elem_id="hub-runs-pick", scale=3, min_width=240)
            refresh = gr.Button("refresh", elem_id="hub-runs-refresh", scale=0, min_width=90)
        listing = gr.Dataframe(headers=LIST_COLUMNS, interactive=False, wrap=True, elem_id="hub-runs-list",
                               label="runs (newest first)")
        summary = gr.Markdown("", elem_id="hub-runs-summary")
        picture = gr.Image(label="grid", type="pil", format="png", interactive=False, visible=False,
                           buttons=["download", "fullscreen"], elem_id="hub-runs-grid")
        table = gr.Dataframe(interactive=False, wrap=True, elem_id="hub-runs-table", label="table", visible=False)
        gallery = gr.Gallery(label="images", columns=6, height=260, format="png", object_fit="contain",
                             buttons=["download", "fullscreen"], visible=False, elem_id="hub-runs-images")
        download = gr.File(label="table (Parquet)", visible=False, elem_id="hub-runs-download")

    def listed(current: str | None) -> tuple[Any, Any]:
        rows = run_rows(runs_root)
        ids = [r[0] for r in rows]
        value = current if current in ids else (ids[0] if ids else None)
        return gr.Dropdown(choices=ids, value=value), gr.Dataframe(value=rows or None, headers=LIST_COLUMNS)

    def select(evt: gr.SelectData) -> Any:
        row = evt.row_value if evt is not None else None
        return gr.Dropdown(value=row[0]) if row else gr.skip()

    outs = [summary, picture, table, gallery, download]
    refresh.click(listed, picked, [picked, listing], queue=False)
    tab.select(listed, picked, [picked, listing], queue=False)
    listing.select(select, None, picked, queue=False)
    picked.change(lambda rid: open_run(runs_root, rid), picked, outs)


def run_rows(runs_root: Path | None) -> list[list[Any]]:
    """The runs list's rows, newest first."""
    found = store.runs(runs_root)
    rows = []
    for _, r in found.iterrows():
        total = r["cells_total"] if pd.notna(r["cells_total"]) else "?"
        rows.append([r["id"], r["kind"], r["name"], r["status"], r["created"].strftime("%Y-%m-%d %H:%M:%S"),
                     f"{r['cells_done']}/{total}", int(r["errors"]), r["models"]])
    return rows


def shown_table(run: store.Run) -> pd.DataFrame:
    """A run's table as the page shows it: the wide columns left out, long answers cut (the run keeps them), and
    the names of a blind Compare round that still awaits its vote replaced by their letters."""
    t = run.table.head(MAX_ROWS)
    hidden = arena.hidden_round(run.rows()) if run.manifest.kind == "compare" else None
    if hidden is not None and "cell" in t.columns:
        mask = t["cell"] == hidden
        names = sorted(((m, f"model {p.upper()}") for p in arena.POSITIONS
                        for m in t.loc[mask, f"model_{p}"] if isinstance(m, str) and m), key=lambda n: -len(n[0]))
        for col in t.columns:
            if t[col].dtype.kind == "O":  # object, or pandas 3's str
                t.loc[mask, col] = t.loc[mask, col].map(lambda v: _unnamed(v, names))
    t = t[[c for c in t.columns if c not in HIDDEN]]
    for col in t.columns:
        if t[col].dtype.kind == "O":  # object, or pandas 3's str
            t[col] = t[col].map(lambda v: v[:MAX_TEXT] + "…" if isinstance(v, str) and len(v) > MAX_TEXT else v)
    return t.round(3)


def _unnamed(value: Any, names: list[tuple[str, str]]) -> Any:
    """A value of a blind round's row with its models' names replaced by their letters."""
    if isinstance(value, str):
        for name, letter in names:
            value = value.replace(name, letter)
    return value


def open_run(runs_root: Path | None, run_id: str | None) -> tuple[Any, ...]:
    """A run's summary, plot picture, table, images and Parquet file (hidden where it has none)."""
    hide = (gr.Image(visible=False), gr.Dataframe(visible=False), gr.Gallery(visible=False), gr.File(visible=False))
    if not run_id:
        return ("no run yet: make an X/Y/Z plot in the Image tab, vote in Compare, or run a grid from a notebook "
                "(`hub.lab`)", *hide)
    try:
        run = store.load(run_id, runs_root)
    except KeyError as err:
        raise gr.Error(str(err.args[0])) from None
    m = run.manifest
    lines = [f"**{m.id}** · {m.kind} · {m.status} · {m.cells_done}/{m.cells_total or '?'} cells · {m.errors} errors",
             f"models: {', '.join(m.models) or 'none'} · hub {m.hub_version or '?'}",
             f"in a notebook: `from hub import lab; run = lab.load({m.id!r}); run.table`"]
    if m.grid and m.grid.get("params"):
        lines.insert(1, "swept: " + json.dumps(m.grid["params"]))
    picture = gr.Image(visible=False)
    if m.grid and m.grid.get("plot") is not None and m.cells_done:
        picture = gr.Image(value=plots.draw(run), visible=True)
    rows = run.table
    axes = plots.axes_of(run)
    images = []
    for _, r in rows.iterrows() if "image" in rows.columns else ():
        if len(images) == MAX_IMAGES:  # each is opened here and sent to the page: thousands took minutes and GBs
            lines.insert(-1, f"showing the first {MAX_IMAGES} images (the run keeps all of them)")
            break
        if (img := run.image(r)) is not None:
            images.append((img, plots.cell_label(axes, r) if axes else str(r.get("model", ""))))
    if len(rows) > MAX_ROWS:
        lines.insert(-1, f"showing the first {MAX_ROWS} of {len(rows)} rows (the Parquet file has them all)")
    parquet = run.path / store.TABLE
    blind = m.kind == "compare" and arena.hidden_round(run.rows()) is not None  # the file names the models
    return ("  \n".join(lines), picture,
            gr.Dataframe(value=shown_table(run), visible=not rows.empty),
            gr.Gallery(value=images, visible=bool(images)),
            gr.File(value=None if blind else str(parquet), visible=parquet.exists() and not blind))
