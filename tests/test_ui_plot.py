"""The Image tab's X/Y/Z plot and the Runs tab, their handlers called directly against a real `hub serve` with the
test responder as the image engine (the browser drives them in tests/test_ui_browser.py)."""

from __future__ import annotations

import re
import time

import gradio as gr
import pytest

from hub.lab import store
from hub.ui import imagegrid, runs
from hub.ui.clients import make_clients
from tests.conftest import start_hub
from tests.helpers import image_model

REGISTRY = ("[hub]\nmemory_budget_gb = 4\n" + image_model("pix", "--start-delay", "1", "--step-delay", "0.05")
            + image_model("pix2", "--step-delay", "0.01"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = start_hub(tmp_path_factory.mktemp("plot"), REGISTRY)
    yield h
    h.stop_leaving_nothing()


@pytest.fixture
def clients(hub):
    client, admin = make_clients(hub.url)
    yield client, admin
    admin.close()


def test_a_plot_shows_its_progress_then_the_labelled_grid_and_is_kept(clients, tmp_path):
    client, admin = clients
    out = list(imagegrid.make_plot(client, admin, tmp_path, "pix", "a red fox", "", "32x32", 4, 0, -1,
                                   ["seed", "1-3", "steps", "2, 4", "", ""], poll=0.05))
    bars = [o[0] for o in out]
    assert any("starting pix" in b for b in bars), "a cold model shows as starting"
    assert any(re.search(r"this cell: step \d/[24]", b) for b in bars), "each cell's own steps show"
    counts = {int(m.group(1)) for b in bars for m in re.finditer(r"cell (\d+) of 6", b)}
    assert len(counts) >= 3, f"the cell count moves: {counts}"
    final_bars, picture, gallery = out[-1]
    assert "6 of 6 cells" in final_bars and "images/s" in final_bars
    assert picture.width > 3 * 32 and picture.height > 2 * 32
    assert len(gallery) == 6 and all(img.size == (32, 32) for img, _ in gallery)
    assert {cap for _, cap in gallery} == {f"seed: {s}, steps: {k}" for s in (1, 2, 3) for k in (2, 4)}
    run_id = re.search(r"kept as run ([\w.-]+)", final_bars).group(1)
    run = store.load(run_id, tmp_path)
    assert run.manifest.kind == "image" and run.manifest.status == "done" and len(run.table) == 6

    # the Runs tab lists it and opens it: summary with the notebook line, the picture, the table, the images
    rows = runs.run_rows(tmp_path)
    assert rows[0][0] == run_id and rows[0][5] == "6/6"
    summary, pic, table, images, parquet = runs.open_run(tmp_path, run_id)
    assert f"lab.load({run_id!r})" in summary
    assert pic.visible and pic.value is not None
    assert table.visible and images.visible and parquet.visible


def test_a_model_axis_and_prompt_sr(clients, tmp_path):
    client, admin = clients
    out = list(imagegrid.make_plot(client, admin, tmp_path, "pix", "a red fox", "", "16x16", 2, 0, 7,
                                   ["model", "pix, pix2", "prompt S/R", "fox, cat", "", ""], poll=0.05))
    assert "4 of 4 cells" in out[-1][0]
    run = store.load(store.runs(tmp_path).loc[0, "id"], tmp_path)
    t = run.table
    assert set(t["model"]) == {"pix", "pix2"} and set(t["prompt"]) == {"a red fox", "a red cat"}
    assert set(t["seed"]) == {7}


@pytest.mark.parametrize(("rows", "message"), [
    (["", "", "", "", "", ""], "pick at least one axis"),
    (["seed", "", "", "", "", ""], "seed axis has no values"),
    (["seed", "1-2", "steps", "", "", ""], "steps axis has no values"),
    (["", "1-2", "", "", "", ""], "have no axis"),
    (["steps", "abc", "", "", "", ""], "not a whole number"),
    (["seed", "1-2", "seed", "3", "", ""], "twice"),
    (["model", "nope", "", "", "", ""], "nope"),
    (["prompt S/R", "dog, cat", "", "", "", ""], "not in the prompt"),
])
def test_bad_plots_say_what_to_fix(clients, tmp_path, rows, message):
    client, admin = clients
    with pytest.raises(gr.Error, match=message):
        list(imagegrid.make_plot(client, admin, tmp_path, "pix", "a fox", "", "16x16", 2, 0, -1, rows))
    with pytest.raises(gr.Error, match="pick an image model"):
        list(imagegrid.make_plot(client, admin, tmp_path, None, "a fox", "", "16x16", 2, 0, -1, rows))


def test_stop_keeps_the_cells_that_ended(clients, tmp_path):
    client, admin = clients
    gen = imagegrid.make_plot(client, admin, tmp_path, "pix", "a fox", "", "16x16", 10, 0, -1,
                              ["seed", "1-16", "", "", "", ""], poll=0.05)
    for bars, _, _ in gen:
        if re.search(r"cell ([3-9]|1\d) of 16", bars):
            break
    gen.close()  # what Gradio does when stop cancels the event
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = store.runs(tmp_path)
        if not found.empty and found.loc[0, "status"] != "running":
            break
        time.sleep(0.1)
    assert found.loc[0, "status"] == "interrupted"
    assert 2 <= found.loc[0, "cells_done"] < 16
