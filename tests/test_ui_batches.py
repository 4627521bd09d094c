"""The Batches tab's handlers, called directly against a real `hub serve` with the test responder as its engines."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from hub.ui import batches as tab
from hub.ui.clients import make_clients
from tests.conftest import start_hub, wait_for
from tests.helpers import text_model

REGISTRY = ("[hub]\nmax_batch_lines = 50\n" + text_model("echo", more="max_concurrency = 8")
            + text_model("slow", "--delay", "0.4", more="max_concurrency = 2"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = start_hub(tmp_path_factory.mktemp("ui-batches"), REGISTRY)
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def client(hub):
    return make_clients(hub.url)[0]


def submit(client, upload=None, prompts="", model=None, max_tokens=None) -> tuple[list[str], str]:
    """Run the submit handler to its end: the status lines it streamed and the batch id."""
    seen = list(tab.submit_batch(client, upload, prompts, model, max_tokens))
    assert seen[-1][1], seen
    return [line for line, _ in seen], seen[-1][1]


def ended(client, bid: str, timeout: float = 60):
    wait_for(lambda: client.batches.retrieve(bid).status in tab.ENDED, f"batch {bid} ended", timeout, every=0.1)
    return client.batches.retrieve(bid)


def lines_of(f: gr.File) -> dict[str, dict]:
    """The JSONL lines of a file the tab offers for download, by custom_id."""
    path = Path(f.value["path"])
    out = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {x["custom_id"]: x for x in out}


def test_prompts_become_a_batch_that_completes_and_downloads(client) -> None:
    shown, bid = submit(client, None, "first prompt\n\nsecond prompt\nthird ünïcode", "echo", 50)
    assert shown[0].startswith("uploading prompts.jsonl") and "creating the batch" in shown[1]
    assert shown[-1] == f"{bid}: in_progress, 3 line(s) to /v1/chat/completions"
    b = ended(client, bid)
    assert b.status == "completed" and b.metadata == {"models": "echo"}
    table, bars, picker, details, sig = tab.refresh(client, bid)
    row = next(r for r in table.value["data"] if r[0] == bid)
    assert row[1:5] == ["completed", "/v1/chat/completions", "echo", "3 / 0 / 3"]
    assert f"{bid}: 3/3 · completed" in bars and 'aria-valuenow="3"' in bars  # the picked batch keeps its bar
    assert bid in picker.choices[0] and f"**{bid}** · completed" in details
    assert tab.refresh(client, bid, sig) == (gr.skip(),) * 4 + (sig,), "nothing changed: nothing re-sent"
    out, errors, status = tab.download_results(client, bid)
    assert out.visible and not errors.visible and "ready" in status
    got = lines_of(out)
    assert set(got) == {"line-1", "line-2", "line-3"}
    assert got["line-3"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: third ünïcode"
    assert out.value["orig_name"] == f"{bid}-output.jsonl"


def test_an_uploaded_jsonl_file_runs(client, tmp_path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/completions",
                                        "body": {"model": "echo", "prompt": f"p{i}"}}) + "\n" for i in range(4)))
    shown, bid = submit(client, str(path), "ignored: the file wins", None)
    assert "uploading mine.jsonl" in shown[0] and shown[-1].endswith("4 line(s) to /v1/completions")
    b = ended(client, bid)
    assert (b.status, b.request_counts.completed, b.endpoint) == ("completed", 4, "/v1/completions")
    out, _, _ = tab.download_results(client, bid)
    assert set(lines_of(out)) == {"q0", "q1", "q2", "q3"}


def test_bad_files_and_forms_are_gr_errors_naming_the_fix(client, tmp_path) -> None:
    before = {f.id for f in client.files.list()}
    path = tmp_path / "bad.jsonl"
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}}
    nope = {**good, "custom_id": "b", "body": {**good["body"], "model": "nope"}}
    path.write_text(json.dumps(good) + "\n" + json.dumps(nope) + "\n")
    with pytest.raises(gr.Error, match=r"line 2: body\.model 'nope' is not a registered model"):
        list(tab.submit_batch(client, str(path), "", None))
    path.write_text(json.dumps(good) + "\nnot json\n")
    with pytest.raises(gr.Error, match="line 2: "):
        list(tab.submit_batch(client, str(path), "", None))
    assert {f.id for f in client.files.list()} == before, "a refused file is not kept"
    with pytest.raises(gr.Error, match="one prompt per line"):
        list(tab.submit_batch(client, None, " \n ", "echo"))
    with pytest.raises(gr.Error, match="pick a text model"):
        list(tab.submit_batch(client, None, "hi", None))
    with pytest.raises(gr.Error, match="batch_nope"):
        tab.download_results(client, "batch_nope")
    with pytest.raises(gr.Error, match="pick a batch"):
        tab.cancel_batch(client, None)


def test_cancel_from_the_tab_and_the_bars_show_counts(client) -> None:
    _, bid = submit(client, None, "\n".join(f"slow prompt {i}" for i in range(20)), "slow")
    wait_for(lambda: client.batches.retrieve(bid).request_counts.completed >= 1, "a first line done", 60)
    _, bars, _, details, _ = tab.refresh(client, None)
    assert f"{bid}: " in bars and "/20 · in_progress" in bars, "a running batch has its bar without being picked"
    assert "no batch picked" in details
    with pytest.raises(gr.Error, match="its output file is written when it ends"):
        tab.download_results(client, bid)
    assert tab.cancel_batch(client, bid).startswith(f"{bid}: cancelling")
    b = ended(client, bid)
    assert b.status == "cancelled" and 1 <= b.request_counts.completed < 20
    _, bars, _, _, _ = tab.refresh(client, bid)
    done = b.request_counts.completed + b.request_counts.failed  # cancelled lines count as neither (as OpenAI's)
    assert f"{bid}: {done}/20" in bars and "· cancelled" in bars and "hub-bar-fill hot" in bars
    out, errors, _ = tab.download_results(client, bid)
    assert len(lines_of(out)) + len(lines_of(errors)) == 20


def test_bar_and_row_of_a_batch() -> None:
    b = gr_batch(completed=120, failed=2, total=200)
    assert tab.batch_bar(b).startswith('<div class="hub-budget"><div class="hub-budget-label">batch_x: 122/200, '
                                       "2 failed · in_progress</div>")
    assert tab.batch_row(b)[:5] == ["batch_x", "in_progress", "/v1/chat/completions", "-", "120 / 2 / 200"]


def gr_batch(**counts):
    import openai.types as t

    return t.Batch(id="batch_x", object="batch", endpoint="/v1/chat/completions", input_file_id="file-1",
                   completion_window="24h", status="in_progress", created_at=0, request_counts=counts)
