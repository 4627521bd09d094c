"""Two runs of one grid side by side, cell by cell: what changed between them (a new engine version, other engine
arguments, another quantisation) in answers, errors, speed and images."""

from __future__ import annotations

import hashlib
import os

import pandas as pd

from hub.lab import store

TEXT = ("answer", "finish_reason", "error")
NUMBERS = ("ttft_s", "total_s", "completion_tokens", "tokens_per_s", "steps_per_s")


def _digest(run: store.Run, rel: object) -> str | None:
    """A hash of an image cell's file (None without one)."""
    if not isinstance(rel, str) or not rel:
        return None
    path = run.path / rel
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def diff(a: str | store.Run, b: str | store.Run, root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The cells two runs share, one row each: what the cell asked, then each result as `<col>_a` and `<col>_b`,
    `same_answer` / `same_image`, and `<number>_ratio` (b over a) for times, tokens and rates."""
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
    ta = ta.assign(image_hash=[_digest(ra, r) for r in ta.get("image", pd.Series([None] * len(ta)))])
    tb = tb.assign(image_hash=[_digest(rb, r) for r in tb.get("image", pd.Series([None] * len(tb)))])
    shown = [c for c in (*TEXT, *NUMBERS, "image", "image_hash") if c in ta.columns or c in tb.columns]
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
    if out["image_hash_a"].notna().any() or out["image_hash_b"].notna().any():
        out["same_image"] = out["image_hash_a"] == out["image_hash_b"]
    out = out.drop(columns=["image_hash_a", "image_hash_b"])
    for col in NUMBERS:
        if col + "_a" in out.columns:
            x, y = pd.to_numeric(out[col + "_a"], errors="coerce"), pd.to_numeric(out[col + "_b"], errors="coerce")
            if x.notna().any() and y.notna().any():
                out[col + "_ratio"] = y / x.where(x != 0)
    return out
