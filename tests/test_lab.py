"""The experiment API (hub.lab) against a real `hub serve` with the test responder as its engines: grids run through
the openai client, kept as runs (journal, Parquet, images, manifest), loaded, diffed, interrupted, killed and resumed;
failed cells are rows with their error. The same API on the demo's real engines is in tests/test_lab_demo.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pandas as pd
import pytest

from hub import lab
from hub.lab import store
from tests.conftest import ROOT, start_hub
from tests.helpers import image_model, text_model

REGISTRY = ("[hub]\nmemory_budget_gb = 4\n"
            + text_model("echo", "--chunk-delay", "0.002", more='env = { SOME_TOKEN = "s3cret" }')
            + text_model("echo2", "--chunk-delay", "0.002") + text_model("slow", "--chunk-delay", "0.25")
            + image_model("pix", "--step-delay", "0.01") + text_model("broken", "--fail-start", memory=0))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = start_hub(tmp_path_factory.mktemp("lab"), REGISTRY)
    yield h
    h.stop_leaving_nothing()


@pytest.fixture
def root(tmp_path):
    return tmp_path / "runs"


def text_grid(**kw) -> lab.Grid:
    return lab.text_grid(["echo", "echo2"], ["one two three", "four five"], params={"temperature": [0.0, 0.7]},
                         max_tokens=32, **kw)


def test_a_text_grid_is_a_table_kept_as_a_run(hub, root):
    grid = text_grid(system="be brief")
    assert grid.size == 8
    run = lab.run(grid, url=hub.url, root=root, name="first grid", concurrency=3, progress=False)
    t = run.table
    assert len(t) == 8 and t["error"].isna().all(), t[["model", "error"]]
    assert set(t["model"]) == {"echo", "echo2"} and sorted(set(t["temperature"])) == [0.0, 0.7]
    assert t["answer"].str.contains("echo:").all(), "the responder echoes the last user message"
    assert (t["ttft_s"] > 0).all() and (t["total_s"] >= t["ttft_s"]).all()
    assert (t["completion_tokens"] > 1).all() and (t["tokens_per_s"] > 0).all()
    assert set(t["finish_reason"]) == {"stop"} and (t["system"] == "be brief").all()
    assert t["cell"].is_unique

    # the folder: manifest, journal, Parquet; the manifest names the hub, its version and the models' entries
    folder = root / run.id
    assert {p.name for p in folder.iterdir()} >= {"manifest.json", "cells.jsonl", "table.parquet"}
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "done" and m["cells_done"] == 8 and m["cells_total"] == 8 and m["errors"] == 0
    assert m["hub_url"] == hub.url and m["hub_version"]
    assert m["models"]["echo"]["engine"] == "command" and "command" in m["models"]["echo"]["args"]
    assert m["models"]["echo"]["env"] == {"SOME_TOKEN": "***"}, "a secret never lands in a run"
    assert pd.read_parquet(folder / "table.parquet").shape == t.shape

    # listed, loaded back, the same table
    listed = lab.runs(root)
    assert listed.loc[0, "id"] == run.id and listed.loc[0, "cells_done"] == 8
    again = lab.load(run.id, root)
    pd.testing.assert_frame_equal(again.table, t)
    assert again.manifest.grid == grid.model_dump(mode="json")


def test_failed_cells_are_rows_and_the_run_goes_on(hub, root):
    grid = lab.text_grid(["echo", "broken", "nothing-here"], ["hi there"], max_tokens=8)
    run = lab.run(grid, url=hub.url, root=root, progress=False)
    t = run.table.set_index("model")
    assert run.manifest.status == "done" and run.manifest.errors == 2
    assert pd.isna(t.loc["echo", "error"]) and t.loc["echo", "answer"]
    assert "broken" in t.loc["broken", "error"] and t.loc["broken", "error"].startswith("503")
    assert "does not exist" in t.loc["nothing-here", "error"] and t.loc["nothing-here", "error"].startswith("404")
    assert run.manifest.models["nothing-here"]["error"], "the manifest says the model is not in the registry"


def test_an_image_grid_keeps_each_image_with_its_seed_and_settings(hub, root):
    steps: list[tuple[str, int, int]] = []
    grid = lab.image_grid(["pix"], ["a red fox"], params={"seed": [1, 2], "steps": [2, 3]}, size="32x32")
    run = lab.run(grid, url=hub.url, root=root, progress=False, concurrency=4,
                  on_step=lambda c, k, n: steps.append((c.key, k, n)))
    t = run.table
    assert len(t) == 4 and t["error"].isna().all(), t["error"].tolist()
    assert sorted(zip(t["seed"], t["num_inference_steps"], strict=True)) == [(1, 2), (1, 3), (2, 2), (2, 3)]
    assert (t["size"] == "32x32").all() and t["image"].str.endswith(".png").all()
    for _, row in t.iterrows():
        img = run.image(row)
        assert img is not None and img.size == (32, 32)
    assert {n for _, _, n in steps} == {2, 3}, "each cell's own denoising steps were seen"
    # a grid without seeds gets one per cell, recorded, different per repeat
    seedless = lab.run(lab.image_grid(["pix"], ["x"], repeats=2, size="16x16"), url=hub.url, root=root,
                       progress=False)
    assert seedless.table["seed"].nunique() == 2


def test_stop_then_resume_runs_each_cell_once(hub, root):
    stop = threading.Event()
    seen: list[str] = []

    def after(row):
        seen.append(row["cell"])
        if len(seen) == 3:
            stop.set()

    grid = text_grid()
    run = lab.run(grid, url=hub.url, root=root, concurrency=1, progress=False, stop=stop, on_cell=after)
    assert run.manifest.status == "interrupted" and run.manifest.cells_done == 3
    assert len(run.table) == 3, "the interrupted run's table holds the cells that ended"
    first = run.table.set_index("cell")["started_at"]

    done = lab.resume(run.id, root=root, progress=False)
    assert done.manifest.status == "done" and len(done.table) == 8
    lines = (root / run.id / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 8, "no cell ran twice"
    assert (done.table.set_index("cell").loc[first.index, "started_at"] == first).all()


def test_a_killed_run_resumes_where_it_stopped(hub, root):
    """A notebook kernel killed mid-run: every cell that ended is kept, the rest run on resume, none twice."""
    script = ("import sys; from hub import lab\n"
              "g = lab.text_grid(['slow'], ['a b c d e f'], params={'seed': list(range(6))}, max_tokens=8)\n"
              f"lab.run(g, url={hub.url!r}, root={str(root)!r}, concurrency=1, progress=False, name='killed')\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "HUB_URL": ""})
    try:
        deadline = time.monotonic() + 60
        journal = None
        while time.monotonic() < deadline:
            found = list(root.glob("*/cells.jsonl")) if root.exists() else []
            if found and len(found[0].read_text().splitlines()) >= 2:
                journal = found[0]
                break
            time.sleep(0.05)
        assert journal is not None, "the run recorded two cells"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_id = journal.parent.name
    killed = lab.load(run_id, root)
    assert killed.manifest.status == "running", "nobody marked it: it was killed"
    kept = len(killed.table)
    assert 2 <= kept < 6
    done = lab.resume(run_id, root=root, progress=False)
    assert done.manifest.status == "done" and len(done.table) == 6 and done.table["error"].isna().all()
    assert len(journal.read_text().splitlines()) == 6, "the cells kept before the kill did not run again"


def test_diff_of_two_runs_of_one_grid(hub, root):
    grid = text_grid()
    a = lab.run(grid, url=hub.url, root=root, progress=False)
    b = lab.run(grid, url=hub.url, root=root, progress=False)
    d = lab.diff(a.id, b.id, root)
    assert len(d) == 8 and d["same_answer"].all()
    assert {"ttft_s_a", "ttft_s_b", "ttft_s_ratio", "tokens_per_s_ratio", "model", "temperature"} <= set(d.columns)
    other = lab.run(lab.text_grid(["echo"], ["unrelated"]), url=hub.url, root=root, progress=False)
    with pytest.raises(ValueError, match="share no cell"):
        lab.diff(a.id, other.id, root)
    pix = lab.run(lab.image_grid(["pix"], ["x"], size="16x16"), url=hub.url, root=root, progress=False)
    with pytest.raises(ValueError, match="text run"):
        lab.diff(a.id, pix.id, root)


def test_runs_dir_and_bad_ids(root, tmp_path, monkeypatch):
    monkeypatch.delenv("HUB_RUNS_DIR", raising=False)
    monkeypatch.setenv("HUB_STATE_DIR", str(tmp_path / "state"))
    assert lab.runs_dir() == tmp_path / "state" / "runs"
    monkeypatch.setenv("HUB_RUNS_DIR", str(root))
    assert lab.runs_dir() == root and lab.runs().empty
    with pytest.raises(KeyError, match="no run"):
        lab.load("20990101-000000-none")
    with pytest.raises(KeyError, match="not a run id"):
        lab.load("../../etc")
    with pytest.raises(ValueError, match="both swept"):
        lab.text_grid(["a"], ["b"], params={"temperature": [1]}, temperature=0)
    with pytest.raises(ValueError, match="result column"):
        lab.text_grid(["a"], ["b"], params={"answer": [1]})


def test_a_journal_cut_by_a_kill_keeps_its_whole_lines(root):
    run = store.create("text", "cut", root=root, cells_total=3)
    run.record({"cell": "a", "answer": "x"})
    run.record({"cell": "b", "answer": "y"})
    with open(run.path / store.JOURNAL, "a") as f:
        f.write('{"cell": "c", "answ')  # the kill landed mid-line
    assert set(lab.load(run.id, root).rows()) == {"a", "b"}
    run.record({"cell": "a", "answer": "again"})  # a cell recorded again: the last line wins
    assert lab.load(run.id, root).rows()["a"]["answer"] == "again"


def test_the_admin_api_gives_a_models_registry_entry(hub):
    r = httpx.get(hub.url + "/hub/models/echo", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == "echo" and body["config"]["engine"] == "command" and body["version"]
    assert body["config"]["env"] == {"SOME_TOKEN": "***"}
    missing = httpx.get(hub.url + "/hub/models/nope", timeout=10)
    assert missing.status_code == 404 and "does not exist" in missing.json()["error"]["message"]


def test_an_xyz_plot_runs_as_a_grid_and_draws_back_from_its_run(hub, root):
    axes = lab.parse_axes([("seed", "1-3"), ("steps", "2, 3"), ("prompt_sr", "fox, cat")])
    grid = lab.plot_grid(axes, model="pix", prompt="a red fox", size="24x24")
    assert grid.size == 12
    run = lab.run(grid, url=hub.url, root=root, progress=False, concurrency=4)
    t = run.table
    assert len(t) == 12 and t["error"].isna().all()
    assert set(zip(t["x"], t["y"], t["z"], strict=True)) == {(x, y, z) for x in range(3) for y in range(2)
                                                              for z in range(2)}
    assert set(t["prompt"]) == {"a red fox", "a red cat"}
    picture = lab.draw(run.id, root)
    assert picture.width > 2 * 3 * 24 and picture.height > 2 * 24, "two grids of 3x2 cells, with margins"
    # a random base seed is one seed for the whole plot, not one per cell
    steps_only = lab.plot_grid(lab.parse_axes([("steps", "1-3")]), model="pix", prompt="p", seed=-1)
    assert len({c.settings["seed"] for c in steps_only.cells()}) == 1
    with pytest.raises(ValueError, match="not in the prompt"):
        lab.plot_grid(lab.parse_axes([("prompt_sr", "dog, cat")]), model="pix", prompt="a fox")
    with pytest.raises(ValueError, match="not an X/Y/Z plot"):
        lab.draw(lab.run(lab.image_grid(["pix"], ["x"], size="16x16"), url=hub.url, root=root, progress=False))


def test_image_cells_of_one_shape_are_sent_together():
    from hub.lab.runner import order

    grid = lab.image_grid(["m"], ["a", "b"], params={"steps": [2, 4], "seed": [1, 2]}, size="64x64")
    sent = order(grid, grid.cells())
    shapes = [c.settings["num_inference_steps"] for c in sent]
    assert shapes == sorted(shapes, key=shapes.index) and shapes.count(2) == 4
    assert [shapes[i] != shapes[i + 1] for i in range(len(shapes) - 1)].count(True) == 1, "one switch of shape"
    text = lab.text_grid(["m"], ["a", "b"], params={"temperature": [0, 1]})
    assert order(text, text.cells()) == text.cells(), "text cells go as they come"


def test_keys_see_settings_not_their_spelling_and_tables_keep_the_grid_order(hub, root):
    a = lab.text_grid(["echo"], ["x"], params={"temperature": [0, 1]})
    b = lab.text_grid(["echo"], ["x"], params={"temperature": [0.0, 1.0]})
    assert [c.key for c in a.cells()] == [c.key for c in b.cells()], "temperature 0 and 0.0 ask the same"
    grid = lab.text_grid(["slow", "echo"], ["one two"], params={"seed": [1, 2, 3]}, max_tokens=4)
    run = lab.run(grid, url=hub.url, root=root, progress=False, concurrency=6)
    assert run.manifest.warmed == {"slow": "ready", "echo": "ready"}, "the models were loaded before the cells"
    assert list(run.table["cell"]) == [c.key for c in grid.cells()], "slow's cells ended last but come first"
    assert (run.table["output_tokens_per_s"] > 0).all()
    assert str(run.table["started_at"].dtype).startswith("datetime64")


def test_an_image_path_from_an_edited_journal_stays_in_the_runs_images(root, tmp_path):
    from PIL import Image

    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    run = store.create("image", "tampered", root=root)
    run.record({"cell": "ok", "x": 0}, Image.new("RGB", (4, 4)))
    for key, rel in [("up", "../../secret.png"), ("abs", str(outside)), ("side", "images/../manifest.json")]:
        with open(run.path / store.JOURNAL, "a") as f:
            f.write(json.dumps({"cell": key, "image": rel}) + "\n")
    run = lab.load(run.id, root)
    assert run.image_path("ok") == run.path / "images" / "ok.png" and run.image("ok") is not None
    for key in ("up", "abs", "side"):
        assert run.image_path(key) is None and run.image(key) is None, key
        assert run.image_path(run.rows()[key]) is None


def test_a_cell_whose_file_is_no_image_is_drawn_as_failed_and_the_runs_tab_opens(root):
    from PIL import Image

    from hub.lab.runner import cell_row
    from hub.ui import runs as runs_tab

    grid = lab.plot_grid(lab.parse_axes([("seed", "1, 2")]), model="m", prompt="p", size="8x8")
    run = store.create("image", "plot", root=root, grid=grid.model_dump(mode="json"), cells_total=grid.size)
    first, second = grid.cells()
    run.record({**cell_row(grid, first), "error": None}, Image.new("RGB", (8, 8), (255, 0, 0)))
    run.record({**cell_row(grid, second), "error": None}, b"<html>not a png</html>")  # an engine's odd answer
    run.finish("done")
    assert run.image(first.key) is not None and run.image(second.key) is None
    picture = lab.draw(run.id, root)
    assert (160, 160, 160) in {c for _, c in picture.getcolors(2**16)}, "the unreadable cell is grey"
    _, shown_picture, _, gallery, _ = runs_tab.open_run(root, run.id)
    assert shown_picture.visible and len(gallery.value) == 1


def test_a_column_of_mixed_types_is_kept_as_text_in_the_parquet_file(root):
    run = store.create("text", "mixed", root=root, cells_total=4)
    run.record({"cell": "a", "seed": 1, "flag": True, "big": 2**70, "error": None})
    run.record({"cell": "b", "seed": "random", "flag": 3, "big": 1, "error": "400: bad seed"})
    run.record({"cell": "c", "seed": None, "flag": None, "error": None})
    run.finish("done")  # Arrow holds no column of ints and strings: this raised, and the run stayed "running"
    loaded = lab.load(run.id, root)
    assert loaded.manifest.status == "done" and (run.path / store.TABLE).exists()
    t = loaded.table.set_index("cell")
    assert t.loc["a", "seed"] == "1" and t.loc["b", "seed"] == "random" and pd.isna(t.loc["c", "seed"])
    assert t.loc["a", "big"] == str(2**70) and t.loc["b", "flag"] == "3"
    assert t.loc["b", "error"] == "400: bad seed"


def test_a_manifest_with_an_impossible_time_does_not_break_the_runs_list(root):
    from hub.ui import runs as runs_tab

    good = store.create("text", "good", root=root)
    for name, created in [("far", "1e20"), ("nan", "NaN"), ("inf", "Infinity")]:
        (root / name).mkdir()
        (root / name / store.MANIFEST).write_text(f'{{"id": "{name}", "kind": "text", "created": {created}}}')
    assert list(lab.runs(root)["id"]) == [good.id]
    assert [r[0] for r in runs_tab.run_rows(root)] == [good.id]


def test_a_value_given_twice_is_refused_rather_than_losing_a_cell():
    # two cells asking the same thing have one key: the run kept one, a plot drew the other place as "failed"
    with pytest.raises(ValueError, match='seed: "1" is on the axis twice'):
        lab.parse_axes([("seed", "1, 1, 2")])
    with pytest.raises(ValueError, match='size: "64x64" is on the axis twice'):
        lab.parse_axes([("size", "64, 64x64")])
    with pytest.raises(ValueError, match=r"params.temperature: 0.7 is given twice"):
        lab.text_grid(["m"], ["p"], params={"temperature": [0.7, 0.7]})
    with pytest.raises(ValueError, match="ask the same thing"):
        lab.Grid(kind="image", models=["m"], prompts=["p"], plot=[{"model": "m", "prompt": "p", "seed": 1, "x": 0},
                                                                  {"model": "m", "prompt": "p", "seed": 1, "x": 1}])
    with pytest.raises(ValueError, match=r"params.temperature: 0.0 is given twice"):
        lab.text_grid(["m"], ["p"], params={"temperature": [0, 0.0]})  # one key: 0 and 0.0 ask the same
    grid = lab.text_grid(["m"], ["p"], params={"temperature": [0.7, 0.70000001, 1]})
    assert len({c.key for c in grid.cells()}) == grid.size == 3


def test_a_sweep_over_numpy_numbers_is_a_sweep_over_numbers(root):
    import numpy as np

    grid = lab.text_grid(["m"], ["p"], params={"seed": np.arange(3), "top_p": np.linspace(0.5, 1, 2)},
                         max_tokens=np.int64(8))
    by_hand = lab.text_grid(["m"], ["p"], params={"seed": [0, 1, 2], "top_p": [0.5, 1.0]}, max_tokens=8)
    assert [c.key for c in grid.cells()] == [c.key for c in by_hand.cells()]
    assert type(grid.cells()[0].settings["seed"]) is int and type(grid.fixed["max_tokens"]) is int
    # what lab.run keeps in the manifest (this raised PydanticSerializationError for numpy.int64)
    run = store.create("text", "np", root=root, grid=grid.model_dump(mode="json"))
    again = lab.Grid.model_validate(lab.load(run.id, root).manifest.grid)
    assert [c.key for c in again.cells()] == [c.key for c in grid.cells()]


def test_nan_and_infinity_are_refused_when_the_grid_is_made():
    # they reached the journal, whose JSON has no NaN: the first cell's record raised and the run ended as failed
    with pytest.raises(ValueError, match=r"params.temperature: nan is not a number a request can send"):
        lab.text_grid(["m"], ["p"], params={"temperature": [0.5, float("nan")]})
    with pytest.raises(ValueError, match="max_tokens: inf"):
        lab.text_grid(["m"], ["p"], max_tokens=float("inf"))
    with pytest.raises(ValueError, match="logit_bias: -inf"):
        lab.text_grid(["m"], ["p"], logit_bias={"1": float("-inf")})


def test_a_registry_entry_hides_secrets_in_command_lines_and_urls_and_keeps_token_counts():
    from hub.admin import redacted

    entry = {"fit_max_tokens": True, "env": {"HF_TOKEN": "hf_1"},
             "args": {"command": ["llama-server", "--port", "{port}", "--api-key", "sk-live-1", "--hf-token=hf_2",
                                  "--no-auth", "--tokenizer", "Qwen/Qwen2.5", "--max-num-batched-tokens", "8192"],
                      "extra_args": ["--api-key", "sk-live-3"],
                      "base_url": "https://me:pa55@host:8000/v1?api_key=sk-live-4&x=1",
                      "override_generation_config": {"max_tokens": 512}, "hf_token": "hf_5"}}
    shown = redacted(entry)
    text = json.dumps(shown)
    for secret in ("sk-live", "hf_1", "hf_2", "hf_5", "pa55"):
        assert secret not in text, secret
    assert shown["args"]["command"] == ["llama-server", "--port", "{port}", "--api-key", "***", "--hf-token=***",
                                        "--no-auth", "--tokenizer", "Qwen/Qwen2.5", "--max-num-batched-tokens", "8192"]
    assert shown["args"]["base_url"] == "https://***@host:8000/v1?api_key=***&x=1"
    assert shown["fit_max_tokens"] is True and shown["args"]["override_generation_config"] == {"max_tokens": 512}


def test_the_runs_tab_cuts_long_answers(root):
    from hub.ui import runs as runs_tab

    run = store.create("text", "long", root=root)
    run.record({"cell": "a", "model": "m", "answer": "word " * 400, "error": None})
    run.finish("done")
    shown = runs_tab.shown_table(run)  # pandas 3 reads text as its str dtype, not object: nothing was cut
    assert len(shown.loc[0, "answer"]) == runs_tab.MAX_TEXT + 1 and shown.loc[0, "answer"].endswith("…")


@pytest.mark.parametrize("answer", [b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\n<html>",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnull", b""])
def test_a_server_that_is_no_hub_leaves_a_note_for_each_model(answer):
    """Another OpenAI-compatible server (a web UI's catch-all page, a proxy that drops the line) is asked for the
    registry entries and to load the models too: its answer is a note in the manifest, never an error that stops
    the run."""
    import socket

    from hub.lab.runner import describe_models, make_client, warm

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def serve():
        for _ in range(4):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        client = make_client(f"http://127.0.0.1:{server.getsockname()[1]}")
        found, version = describe_models(client, ["a", "b"])
        warmed = warm(["a", "b"], client=client, timeout=10)  # what lab.run does next
    finally:
        server.close()
    assert set(found) == {"a", "b"} and all(found[m]["error"] for m in found) and version is None
    assert set(warmed) == {"a", "b"} and all(w.startswith("not loaded: ") for w in warmed.values())


def test_the_runs_tab_opens_a_huge_run_in_bounded_time(root, monkeypatch):
    from PIL import Image

    from hub.ui import runs as runs_tab

    monkeypatch.setattr(runs_tab, "MAX_IMAGES", 5, raising=False)
    monkeypatch.setattr(runs_tab, "MAX_ROWS", 30, raising=False)
    run = store.create("image", "huge", root=root)
    opened = []
    for i in range(40):
        run.record({"cell": f"c{i}", "model": "m", "seed": i, "error": None}, Image.new("RGB", (4, 4)))
    run.finish("done")
    real = store.Run.image
    monkeypatch.setattr(store.Run, "image", lambda self, cell: opened.append(1) or real(self, cell))
    summary, _, table, gallery, _ = runs_tab.open_run(root, run.id)
    # every image was opened and sent (3000 of 512x512 took 82 s and 2 GB before the page got them)
    assert len(gallery.value) == 5 and len(opened) == 5
    assert len(table.value["data"]) == 30
    assert "first 5 images" in summary and "first 30 of 40 rows" in summary


def test_a_bad_concurrency_leaves_no_run_behind(root):
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        lab.run(lab.text_grid(["m"], ["p"]), url="http://127.0.0.1:9", root=root, concurrency=0, progress=False)
    assert lab.runs(root).empty, "a run folder stayed behind, 'running' with no cell"


def test_settings_the_runner_gives_itself_are_refused():
    for name in ("stream", "stream_options", "n", "extra_body"):
        with pytest.raises(ValueError, match="the runner sets these itself"):
            lab.text_grid(["a"], ["b"], **{name: 1})
