"""Experiments against a hub: grids of models, prompts and settings, kept as runs.

    from hub import lab
    grid = lab.text_grid(["smollm2", "tiny-vlm"], ["Name a colour.", "Say hi."],
                         params={"temperature": [0, 0.8]}, max_tokens=32)
    run = lab.run(grid, url="http://127.0.0.1:8000", concurrency=4)   # a progress bar, then:
    run.table                    # a pandas DataFrame: one row per cell, errors as rows
    lab.runs()                   # every saved run; lab.load(run_id), lab.resume(run_id), lab.diff(a, b)

    axes = lab.parse_axes([("seed", "1-4"), ("steps", "2, 4, 8")])   # an X/Y plot, as AUTOMATIC1111 writes axes
    plot = lab.run(lab.plot_grid(axes, model="tiny-sd", prompt="a fox", size="64x64"))
    lab.draw(plot)               # the labelled grid as one PIL image

Runs live under the hub's state dir (`.hub/runs`; $HUB_RUNS_DIR or $HUB_STATE_DIR move them): hub/lab/store.py
says what a run folder holds.
"""

from hub.lab.diff import diff
from hub.lab.grid import Cell, Grid, image_grid, text_grid
from hub.lab.plots import draw, parse_axes, plot_grid
from hub.lab.runner import make_client, resume, run, warm
from hub.lab.store import Run, load, runs, runs_dir

__all__ = ["Cell", "Grid", "Run", "diff", "draw", "image_grid", "load", "make_client", "parse_axes", "plot_grid",
           "resume", "run", "runs", "runs_dir", "text_grid", "warm"]
