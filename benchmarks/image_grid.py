"""An X/Y plot made through the grid feature (hub.lab) against the same requests sent one by one: images per second.

    python -m benchmarks.image_grid [--seeds 4] [--steps 1 2 3 4] [--size 64x64] [--rounds 3] [--concurrency 4]
                                    [--max-batch 4] [--out DIR]

Starts its own `hub serve` with the demo's tiny-sd registered twice (benchmarks/image_batching.py): `batch-on`
(max_batch N, as the demo registers it) and `batch-off` (max_batch 1). Each round makes the seeds x steps plot three
ways, in a rotating order so drift on a shared machine hits all alike:
- `one-by-one`: its cells as single requests, each sent when the last one ended (what a script or a person does);
- `grid`: hub.lab.run of the plot on batch-on, `concurrency` cells under way, cells of one shape sent together;
- `grid-no-batching`: the same on batch-off, which tells what the image server's batching adds to concurrency.
The medians of the rounds and the ratio to one-by-one are printed and written to image_grid.csv.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from benchmarks.image_batching import engine_stats, started_hub
from benchmarks.results import write_csv
from benchmarks.scenarios import ImageBatchingScenario
from hub import lab

WAYS = ("one-by-one", "grid", "grid-no-batching")
PROMPT = "a lighthouse on a cliff at sunset"


def one_by_one(client: openai.OpenAI, grid: lab.Grid) -> float:
    """The plot's cells as single requests, one after another: seconds taken."""
    t0 = time.perf_counter()
    for cell in grid.cells():
        s = cell.settings
        extra = {k: v for k, v in s.items() if k != "size"}
        client.images.generate(model=cell.model, prompt=str(cell.prompt), size=s["size"], n=1,
                               response_format="b64_json", extra_body=extra)
    return time.perf_counter() - t0


def through_lab(client: openai.OpenAI, grid: lab.Grid, root: Path, concurrency: int) -> float:
    """The plot made by hub.lab.run: seconds taken (every cell must succeed)."""
    t0 = time.perf_counter()
    run = lab.run(grid, client=client, root=root, concurrency=concurrency, progress=False, name="bench")
    took = time.perf_counter() - t0
    if run.manifest.errors:
        raise RuntimeError(f"{run.manifest.errors} cells failed: {run.table['error'].dropna().iloc[0]}")
    return took


def measure(seeds: int = 4, steps: tuple[int, ...] = (1, 2, 3, 4), size: str = "64x64", rounds: int = 3,
            concurrency: int = 4, max_batch: int = 4) -> list[dict[str, Any]]:
    """Rows of (round, way, seconds, images, images_per_s, pipeline_calls, ...)."""
    sc = ImageBatchingScenario(name="image_grid", size=size, steps=max(steps), max_batch=max_batch, requests=1,
                               rounds=rounds, concurrency=concurrency)
    axes = lab.parse_axes([("seed", f"1-{seeds}"), ("steps", ", ".join(str(s) for s in steps))])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, started_hub(sc, Path(tmp)) as hub:
        client = lab.make_client(hub.v1.removesuffix("/v1"), timeout=3600)
        grids = {m: lab.plot_grid(axes, model=m, prompt=PROMPT, size=size) for m in ("batch-on", "batch-off")}
        one_by_one(client, lab.plot_grid(lab.parse_axes([("seed", "1-2")]), model="batch-on", prompt=PROMPT,
                                         size=size))  # warm-up: first calls pay for lazy set-up
        for r in range(rounds):
            order = WAYS[r % 3:] + WAYS[:r % 3]
            for way in order:
                model = "batch-off" if way == "grid-no-batching" else "batch-on"
                before = engine_stats(hub, model) or {}
                if way == "one-by-one":
                    took = one_by_one(client, grids[model])
                else:
                    took = through_lab(client, grids[model], Path(tmp) / "runs", concurrency)
                after = engine_stats(hub, model) or {}
                calls = after.get("pipeline_calls", 0) - before.get("pipeline_calls", 0) if after else None
                n = grids[model].size
                rows.append({"round": r, "way": way, "seconds": took, "images": n, "images_per_s": n / took,
                             "pipeline_calls": calls,
                             "size": size, "seeds": seeds, "steps": " ".join(map(str, steps)),
                             "concurrency": concurrency, "max_batch": max_batch})
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per way: the median images/s over the rounds and its ratio to one-by-one (the median of per-round ratios)."""
    out: dict[str, dict[str, float]] = {}
    base = {r["round"]: r["images_per_s"] for r in rows if r["way"] == "one-by-one"}
    for way in WAYS:
        mine = [r for r in rows if r["way"] == way]
        if mine:
            out[way] = {"images_per_s": statistics.median(r["images_per_s"] for r in mine),
                        "ratio": statistics.median(r["images_per_s"] / base[r["round"]] for r in mine)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--size", default="64x64")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--out", default="benchmarks/out")
    a = p.parse_args()
    rows = measure(a.seeds, tuple(a.steps), a.size, a.rounds, a.concurrency, a.max_batch)
    path = write_csv(rows, Path(a.out) / "image_grid.csv")
    for way, s in summary(rows).items():
        print(f"{way:>17}: {s['images_per_s']:.2f} images/s (median of {a.rounds} rounds), "
              f"{s['ratio']:.2f}x one-by-one")
    print(f"rows: {path}")


if __name__ == "__main__":
    main()
