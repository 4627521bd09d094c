"""X/Y/Z plots as grids and runs: axes (hub/lab/xyz.py) over a base setting become an image grid whose cells know
their place, run like any grid (hub/lab/runner.py), and a run of one is drawn back as the labelled picture.

As in AUTOMATIC1111's script, a plot whose seed is random (-1) and not on an axis draws one seed for all its cells,
so that the cells differ only by what the axes change.
"""

from __future__ import annotations

import os
import random
from typing import Any

from PIL import Image

from hub.lab import store, xyz
from hub.lab.grid import Grid

BASE_KEYS = ("prompt", "negative", "seed", "steps", "guidance", "size", "model")


def plot_grid(axes: list[xyz.Axis], *, model: str, prompt: str, negative: str = "", seed: int | None = -1,
              steps: int | None = None, guidance: float | None = None, size: str | None = None) -> Grid:
    """The image grid of an X/Y/Z plot: up to three axes (x, y, z in order) over these base settings. None (or 0
    guidance, or seed -1) leaves a setting to the model, except the seed: one random seed then serves every cell."""
    xyz.check_axes(axes)
    kinds = {a.kind for a in axes}
    if "prompt_sr" in kinds:
        xyz.check_prompt_sr(next(a for a in axes if a.kind == "prompt_sr"), prompt, negative)
    if not prompt.strip():
        raise ValueError("write a prompt first")
    if (seed is None or seed < 0) and "seed" not in kinds:
        seed = random.randrange(2**31 - 1)
    base = {"prompt": prompt, "negative": negative, "seed": seed, "steps": steps, "guidance": guidance,
            "size": size, "model": model}
    search = next((a.search for a in axes if a.kind == "prompt_sr"), None)
    specs: list[dict[str, Any]] = []
    for cell in xyz.cells(axes):
        s = xyz.apply(cell.values, base, search)
        spec = {"model": s["model"], "prompt": s["prompt"], "x": cell.x, "y": cell.y, "z": cell.z,
                "size": s["size"] or None, "seed": s["seed"] if s["seed"] is not None and s["seed"] >= 0 else None,
                "num_inference_steps": s["steps"] or None, "guidance_scale": s["guidance"] or None,
                "negative_prompt": (s["negative"] or "").strip() or None}
        specs.append({k: v for k, v in spec.items() if v is not None})
    models = list(dict.fromkeys(s["model"] for s in specs))
    prompts = list(dict.fromkeys(s["prompt"] for s in specs))
    return Grid(kind="image", models=models, prompts=prompts, plot=specs,
                axes=[a.model_dump(mode="json") for a in axes])


def parse_axes(rows: list[tuple[str | None, str]], models: list[str] | None = None) -> list[xyz.Axis]:
    """Axes from (kind, values text) pairs as a form gives them; a pair without a kind or values is skipped."""
    return [xyz.parse_axis(kind, text, models) for kind, text in rows if kind and text and text.strip()]


def cell_label(axes: list[xyz.Axis], row: Any) -> str:
    """A plot cell's caption: its value on each axis ("seed: 2, steps: 4")."""
    return ", ".join(a.value_label(a.values[int(row.get(role, 0) or 0)]) for a, role in zip(axes, "xyz"[:len(axes)],
                                                                                         strict=True))


def axes_of(run: store.Run) -> list[xyz.Axis]:
    """The axes of a plot's run (none for another run)."""
    return [xyz.Axis.model_validate(a) for a in (run.manifest.grid or {}).get("axes") or []]


def draw(run: str | store.Run, root: str | os.PathLike[str] | None = None, repeat: int = 0) -> Image.Image:
    """The labelled picture of a plot's run (one grid per Z value, side by side): axis titles and values on the
    margins, a grey "failed" cell where a cell has no image."""
    run = store.load(run, root)
    grid = run.manifest.grid or {}
    if grid.get("plot") is None:
        raise ValueError(f"run {run.id} is not an X/Y/Z plot (make one with hub.lab.plot_grid)")
    axes = axes_of(run)
    size = [len(a.values) for a in axes] + [1] * (3 - len(axes))
    table = run.table
    if "repeat" in table.columns:
        table = table[table["repeat"] == repeat]
    images: dict[tuple[int, int, int], Image.Image | None] = {}
    for _, row in table.iterrows():
        place = tuple(int(row.get(k, 0) or 0) for k in ("x", "y", "z"))
        images[place] = run.image(row)  # type: ignore[index]

    def labels(i: int) -> list[str]:
        return [axes[i].value_label(v) for v in axes[i].values] if i < len(axes) else []

    def title(i: int) -> str:
        return axes[i].label if i < len(axes) else ""

    grids = []
    for z in range(size[2]):
        cells = [[images.get((x, y, z)) for x in range(size[0])] for y in range(size[1])]
        grids.append(xyz.draw_grid(cells, labels(0), labels(1), title(0), title(1)))
    return xyz.draw_grids(grids, labels(2), title(2))
