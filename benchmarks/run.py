"""Run benchmark scenarios against a running hub and write one CSV per scenario.

    python -m benchmarks.run [--hub URL] [--only NAME ...] [--out DIR] [--list]

Without --only, every scenario of DEMO_SCENARIOS (benchmarks/scenarios.py) runs. The router-overhead, load,
contention and image-batching scenarios start their own hubs: use `python -m benchmarks.router_overhead`,
`python -m benchmarks.load`, `python -m benchmarks.contention` and `python -m benchmarks.image_batching` for them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import httpx

from benchmarks.contention import run_contention
from benchmarks.image_batching import run_image_batching, run_previews
from benchmarks.images import run_images
from benchmarks.lifecycle import run_cold_start, run_swap
from benchmarks.load import run_load
from benchmarks.measure import HubClient
from benchmarks.memory import measure_memory
from benchmarks.results import write_csv
from benchmarks.router_overhead import run_router_overhead
from benchmarks.scenarios import (
    DEMO_SCENARIOS,
    ColdStartScenario,
    ContentionScenario,
    ImageBatchingScenario,
    ImagePreviewScenario,
    ImageScenario,
    LoadScenario,
    MemoryScenario,
    RouterOverheadScenario,
    Scenario,
    SwapScenario,
    TextScenario,
)
from benchmarks.text import run_text


def run_scenario(hub: HubClient, sc: Scenario) -> list[dict[str, Any]]:
    """The rows of one scenario (for text: the per-concurrency summary)."""
    if isinstance(sc, TextScenario):
        return run_text(hub, sc)[0]
    if isinstance(sc, ImageScenario):
        return run_images(hub, sc)
    if isinstance(sc, ImagePreviewScenario):
        return run_previews(hub, sc)
    if isinstance(sc, ImageBatchingScenario):
        return run_image_batching(sc)[0]
    if isinstance(sc, MemoryScenario):
        return measure_memory(hub, sc)
    if isinstance(sc, ColdStartScenario):
        return run_cold_start(hub, sc)
    if isinstance(sc, SwapScenario):
        return run_swap(hub, sc)
    if isinstance(sc, RouterOverheadScenario):
        return run_router_overhead(sc)
    if isinstance(sc, LoadScenario):
        return run_load(sc)
    if isinstance(sc, ContentionScenario):
        return run_contention(sc)
    raise TypeError(f"unknown scenario {sc!r}")


def main(argv: list[str] | None = None) -> int:
    """Command line of the scenario runner."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--hub", default=None, help="the hub's /v1 URL (default: HUB_URL, else http://127.0.0.1:8000/v1)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="scenario names to run")
    p.add_argument("--out", default="artifacts/benchmarks", help="folder for the CSV files")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    a = p.parse_args(argv)
    scenarios = DEMO_SCENARIOS
    if a.list:
        for sc in scenarios:
            print(f"{sc.name:<20} {sc.kind:<12} {sc.model_dump_json(exclude={'name', 'kind'})}")
        return 0
    if a.only:
        unknown = set(a.only) - {sc.name for sc in scenarios}
        if unknown:
            print(f"benchmarks: unknown scenario(s) {', '.join(sorted(unknown))} (valid: "
                  f"{', '.join(sc.name for sc in scenarios)})", file=sys.stderr)
            return 1
        scenarios = [sc for sc in scenarios if sc.name in a.only]
    hub = HubClient(a.hub)
    for sc in scenarios:
        print(f"{sc.name}: running ({sc.kind}) ...", flush=True)
        try:
            rows = run_scenario(hub, sc)
        except (RuntimeError, OSError, httpx.HTTPError) as err:
            print(f"benchmarks: {sc.name}: {err}", file=sys.stderr)
            return 1
        print(f"{sc.name}: {len(rows)} row(s) -> {write_csv(rows, Path(a.out) / f'{sc.name}.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
