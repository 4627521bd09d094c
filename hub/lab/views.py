"""Views of results for people reading a notebook: a run's answers side by side, tables whose long text wraps, and
each item's nearest neighbours in a similarity matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from hub.lab.grid import RESERVED

RESULTS = RESERVED - {"model", "prompt", "repeat", "x", "y", "z"} | {"steps_per_s", "reasoning"}


def side_by_side(table: pd.DataFrame, columns: Sequence[str] = ("model",), rows: Sequence[str] = ("prompt",),
                 value: str = "answer") -> pd.DataFrame:
    """A run's answers as a pivot: one row per prompt (in the grid's order), one column per model and per value of
    each other column named in `columns` (a setting such as temperature), sorted; answers without the whitespace
    at their ends, a failed cell's error in its place."""
    rows, columns = list(rows), list(columns)
    keys = rows + columns
    shown = table[value].astype(object) if value in table.columns else pd.Series(None, index=table.index, dtype=object)
    shown = shown.map(lambda v: v.strip() if isinstance(v, str) else v)
    if "error" in table.columns:
        failed = table["error"].fillna("").astype(str).ne("")
        shown = shown.where(~failed, "error: " + table["error"].astype(str))
    twice = table[table.duplicated(keys, keep=False)]
    if len(twice):
        asked = [c for c in twice.columns if c not in RESULTS and c not in keys and c != value]
        varying = [c for c in asked if twice.groupby(keys, dropna=False)[c].nunique(dropna=False).gt(1).any()]
        raise ValueError(f"several cells per {', '.join(keys)}: add {' or '.join(varying) or 'a column'} to the "
                         "columns or the rows")
    if "prompt_index" in table.columns:
        table = table.sort_values("prompt_index", kind="stable")
    out = table.assign(_shown=shown).pivot(index=rows, columns=columns, values="_shown").sort_index(axis=1)
    first = table[rows].drop_duplicates()
    return out.reindex(pd.MultiIndex.from_frame(first) if len(rows) > 1 else pd.Index(first[rows[0]], name=rows[0]))


def wrapped(frame: pd.DataFrame, width: str = "22em", precision: int = 3) -> Styler:
    """A table shown as HTML whose long text wraps within `width` per column (newlines kept), aligned top left;
    numbers in cells with `precision` digits after the point, numbers in headers as short as they can be."""
    cells = {"white-space": "pre-wrap", "text-align": "left", "vertical-align": "top", "max-width": width}
    heads = [{"selector": "th", "props": [("text-align", "left"), ("vertical-align", "top")]}]
    style = frame.style.set_properties(**cells).set_table_styles(heads).format(precision=precision)
    for axis in ("index", "columns"):
        style = style.format_index(lambda v: f"{v:g}" if isinstance(v, float) else v, axis=axis,
                                   level=list(range(getattr(frame, axis).nlevels)))
    return style


def neighbours(similarity: np.ndarray, labels: Sequence[str], k: int = 3) -> pd.DataFrame:
    """Each item's `k` nearest other items in a square similarity matrix (cosine, say), most similar first: one
    row per item, columns `1`, `1 sim`, `2`, `2 sim`..."""
    sim = np.asarray(similarity, dtype=float)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] != len(labels):
        raise ValueError(f"similarity is {sim.shape}: it must be square, one row per label ({len(labels)})")
    k = min(k, len(labels) - 1)
    others = np.where(np.eye(len(labels), dtype=bool), -np.inf, sim)  # an item is not its own neighbour
    nearest = np.argsort(-others, axis=1, kind="stable")[:, :k]
    out = pd.DataFrame(index=pd.Index(list(labels), name="item"))
    for r in range(k):
        out[f"{r + 1}"] = [labels[j] for j in nearest[:, r]]
        out[f"{r + 1} sim"] = others[np.arange(len(labels)), nearest[:, r]]
    return out
