"""Two runs of one grid side by side, cell by cell: what changed between them (a new engine version, other engine
arguments, another quantisation) in answers, errors, speed and images.

Images are compared by their pixels: `image_max_diff` is the largest difference of one channel of one pixel (0 to
255), and `same_image` allows SAME_IMAGE_TOLERANCE, because one seed made alone and made in a batch with other
cells differs by rounding (a batched matrix product adds in another order), not by content.
"""

from __future__ import annotations

import os

import pandas as pd
from PIL import Image, ImageChops

from hub.lab import store

TEXT = ("answer", "finish_reason", "error")
NUMBERS = ("ttft_s", "total_s", "completion_tokens", "tokens_per_s", "output_tokens_per_s", "steps_per_s")
SAME_IMAGE_TOLERANCE = 3  # of 255: a batch's rounding, not a change


def max_diff(a: Image.Image | None, b: Image.Image | None) -> int | None:
    """The largest per-channel difference of two images (255 when their sizes differ; None without both)."""
    if a is None or b is None:
        return None
    if a.size != b.size:
        return 255
    extrema = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getextrema()
    return max(hi for _, hi in extrema)


def diff(a: str | store.Run, b: str | store.Run, root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The cells two runs share, one row each: what the cell asked, then each result as `<col>_a` and `<col>_b`,
    `same_answer`, or `image_max_diff` and `same_image`, and `<number>_ratio` (b over a) for times, tokens and
    rates."""
    ra, rb = store.load(a, root), store.load(b, root)
    if ra.manifest.kind != rb.manifest.kind:
        raise ValueError(f"run {ra.id} is a {ra.manifest.kind} run and {rb.id} a {rb.manifest.kind} run: "
                         "diff compares two runs of one grid")
    ta, tb = ra.table, rb.table
    if ta.empty or tb.empty or not set(ta["cell"]) & set(tb["cell"]):
        raise ValueError(f"runs {ra.id} and {rb.id} share no cell: diff compares two runs of one grid "
                         "(the same models, prompts and settings)")
    results = set(TEXT) | set(NUMBERS) | {"image", "started_at", "recorded_at", "reasoning"}
    asked = [c for c in ta.columns if c not in results and c in tb.columns]
    shown = [c for c in (*TEXT, *NUMBERS, "image") if c in ta.columns or c in tb.columns]
    left = ta[asked + [c for c in shown if c in ta.columns]]
    right = tb[["cell", *[c for c in shown if c in tb.columns]]]
    out = left.merge(right, on="cell", how="inner", suffixes=("_a", "_b"))
    for col in shown:  # a column only one side has still gets both names
        for side in ("_a", "_b"):
            if col + side not in out.columns and col in out.columns:
                out = out.rename(columns={col: col + ("_a" if col in ta.columns else "_b")})
            if col + side not in out.columns:
                out[col + side] = None
    if "answer_a" in out.columns:
        out["same_answer"] = out["answer_a"].fillna("") == out["answer_b"].fillna("")
    if "image_a" in out.columns and (out["image_a"].notna().any() or out["image_b"].notna().any()):
        ia = {r["cell"]: r for r in ra.rows().values()}
        ib = {r["cell"]: r for r in rb.rows().values()}
        diffs = [max_diff(ra.image(ia.get(c, {})), rb.image(ib.get(c, {}))) for c in out["cell"]]
        out["image_max_diff"] = pd.array(diffs, dtype="Int64")
        out["same_image"] = [d is not None and d <= SAME_IMAGE_TOLERANCE for d in diffs]
    for col in NUMBERS:
        if col + "_a" in out.columns:
            x, y = pd.to_numeric(out[col + "_a"], errors="coerce"), pd.to_numeric(out[col + "_b"], errors="coerce")
            if x.notna().any() and y.notna().any():
                out[col + "_ratio"] = y / x.where(x != 0)
    return out
