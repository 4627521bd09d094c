"""The Batches tab: make a batch (an uploaded JSONL file, or one written from a list of prompts for a text model),
watch every batch's progress (a table and a bar per batch, refreshed every second while the tab is open), open one
to see its details, cancel it, and download its output and error files. Only the openai client's Files and Batches
calls: the same API a script uses."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import openai

from hub.ui.clients import SDK_ERRORS
from hub.ui.common import bar_html, ui_error

COLUMNS = ["id", "status", "endpoint", "model(s)", "completed / failed / total", "created"]
RUNNING = ("validating", "in_progress", "finalizing", "cancelling")
ENDED = ("completed", "failed", "expired", "cancelled")
CHAT = "/v1/chat/completions"
REFRESH_S = 1.0
LISTED = 20  # the newest batches the table shows (one list call per refresh)
# the Python tick learns from the page whether the tab is still shown, and stops its timer when it is not
SHOWN_JS = "(picked, last, shown) => [picked, last, document.querySelector('#hub-batch-list')?.offsetParent != null]"


def build(client: openai.OpenAI) -> gr.Dropdown:
    """The Batches tab's components and events (inside the app's Blocks); returns its model picker for the app."""
    with gr.Tab("Batches", id="batches") as tab:
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=280):
                prompts = gr.Textbox(label="prompts, one per line", lines=5, max_lines=12, elem_id="hub-batch-prompts",
                                     placeholder="write a haiku about the sea\nname three rivers in Asia")
                with gr.Row():
                    model = gr.Dropdown(label="model", choices=[], scale=2, min_width=160,
                                        elem_id="hub-batch-model")
                    max_tokens = gr.Number(label="max_tokens (0: default)", value=0, precision=0, minimum=0,
                                           scale=1, min_width=120, elem_id="hub-batch-max-tokens")
            with gr.Column(scale=2, min_width=240):
                upload = gr.File(label="or a JSONL file (used instead of the prompts)", file_types=[".jsonl"],
                                 height=150, elem_id="hub-batch-file")
                submit = gr.Button("submit batch", variant="primary", elem_id="hub-batch-submit")
        status = gr.Markdown("", elem_classes=["hub-status"], elem_id="hub-batch-status")
        bars = gr.HTML("", elem_id="hub-batch-progress")
        table = gr.Dataframe(headers=COLUMNS, value=[], interactive=False, wrap=True, elem_id="hub-batch-list",
                             label=f"batches (newest {LISTED}, refreshed every second)")
        with gr.Row():
            picked = gr.Dropdown(label="batch", choices=[], scale=3, min_width=240, elem_id="hub-batch-pick")
            cancel = gr.Button("cancel", variant="stop", scale=0, min_width=90, elem_id="hub-batch-cancel")
            download = gr.Button("download results", scale=0, min_width=200, elem_id="hub-batch-download")
        details = gr.Markdown("", elem_id="hub-batch-details")
        with gr.Row():
            output = gr.File(label="output (.jsonl)", visible=False, elem_id="hub-batch-output")
            errors = gr.File(label="errors (.jsonl)", visible=False, elem_id="hub-batch-errors")
        last = gr.State("")
        shown = gr.Checkbox(value=True, visible=False)
        timer = gr.Timer(REFRESH_S, active=False)

    def tick(pick: str | None, seen: str, visible: bool = True) -> tuple[Any, ...]:
        if not visible:  # another tab is open: stop refreshing until this one is picked again
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen, gr.Timer(active=False)
        return (*refresh(client, pick, seen), gr.Timer(active=True))

    def made(*args: Any) -> Iterator[tuple[Any, Any]]:
        for line, bid in submit_batch(client, *args):
            yield line, gr.Dropdown(choices=[bid], value=bid) if bid else gr.skip()

    def select(evt: gr.SelectData) -> Any:
        row = evt.row_value if evt is not None else None
        return gr.Dropdown(value=row[0]) if row else gr.skip()

    outs = [table, bars, picked, details, last, timer]
    timer.tick(tick, [picked, last, shown], outs, js=SHOWN_JS, show_progress="hidden", queue=False)
    tab.select(tick, [picked, last], outs, show_progress="hidden", queue=False)
    submit.click(made, [upload, prompts, model, max_tokens], [status, picked]).then(
        tick, [picked, last], outs, show_progress="hidden")
    table.select(select, None, picked, queue=False)
    picked.input(lambda b: refresh(client, b, ""), picked, outs[:5], show_progress="hidden")
    cancel.click(lambda b: cancel_batch(client, b), picked, status).then(tick, [picked, last], outs)
    download.click(lambda b: download_results(client, b), picked, [output, errors, status])
    return model


# ---- making a batch ----

def prompts_jsonl(prompts: str, model: str | None, max_tokens: float | None = None) -> bytes:
    """A chat batch's input file: one line per non-empty prompt, custom_ids line-1, line-2 ..."""
    if not model:
        raise gr.Error("pick a text model for the prompts (the Models tab lists them)")
    texts = [p.strip() for p in (prompts or "").splitlines() if p.strip()]
    if not texts:
        raise gr.Error("write one prompt per line, or upload a JSONL file")
    extra = {"max_tokens": int(max_tokens)} if max_tokens and max_tokens > 0 else {}
    return b"".join(json.dumps({"custom_id": f"line-{n}", "method": "POST", "url": CHAT,
                                "body": {"model": model, "messages": [{"role": "user", "content": t}], **extra}},
                               ensure_ascii=False).encode() + b"\n" for n, t in enumerate(texts, 1))


def file_facts(content: bytes) -> tuple[str, list[str]]:
    """An input file's endpoint (its first line's url; chat when unreadable: the hub names the bad line) and models."""
    endpoint, models = "", []
    for raw in content.splitlines():
        try:
            line = json.loads(raw) if raw.strip() else None
        except ValueError:
            continue
        if not isinstance(line, dict):
            continue
        endpoint = endpoint or (line.get("url") if isinstance(line.get("url"), str) else "")
        body = line.get("body")
        m = body.get("model") if isinstance(body, dict) else None
        if isinstance(m, str) and m not in models:
            models.append(m)
    return endpoint or CHAT, models


def submit_batch(client: openai.OpenAI, upload: str | None, prompts: str, model: str | None,
                 max_tokens: float | None = None) -> Iterator[tuple[str, str | None]]:
    """Upload the JSONL file (or the prompts written as one) and create its batch; yields (status line, batch id)."""
    if upload:
        path = Path(upload)
        content, name = path.read_bytes(), path.name
    else:
        content, name = prompts_jsonl(prompts, model, max_tokens), "prompts.jsonl"
    endpoint, models = file_facts(content)
    yield f"uploading {name} ({len(content)} bytes)...", None
    try:
        f = client.files.create(file=(name, content), purpose="batch")
    except SDK_ERRORS as err:
        raise ui_error(err) from None
    yield f"creating the batch of {f.id}...", None
    meta = {"models": ", ".join(models)[:512]} if models else None
    try:
        b = client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h",  # type: ignore[arg-type]
                                  metadata=meta)
    except SDK_ERRORS as err:
        with contextlib.suppress(*SDK_ERRORS):  # the hub refused the file: it is of no use kept
            client.files.delete(f.id)
        raise ui_error(err) from None
    yield f"{b.id}: {b.status}, {b.request_counts.total} line(s) to {endpoint}", b.id


# ---- watching ----

def counts(b: Any) -> tuple[int, int, int]:
    """(completed, failed, total) of a batch."""
    c = b.request_counts
    return (c.completed, c.failed, c.total) if c else (0, 0, 0)


def batch_bar(b: Any) -> str:
    """One batch's progress bar: "batch_x: 120/200, 2 failed · in_progress"."""
    done, failed, total = counts(b)
    label = f"{b.id}: {done + failed}/{total}" + (f", {failed} failed" if failed else "") + f" · {b.status}"
    level = "hot" if b.status in ("failed", "expired", "cancelled") else "warm" if failed else "ok"
    return bar_html(label, done + failed, total, f"batch {b.id}", level)


def batch_row(b: Any) -> list[str]:
    """A row of the batches table."""
    done, failed, total = counts(b)
    models = (b.metadata or {}).get("models") or "-"
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.created_at))
    return [b.id, b.status, b.endpoint, models, f"{done} / {failed} / {total}", created]


def batch_details(b: Any | None) -> str:
    """The picked batch's details (Markdown)."""
    if b is None:
        return "no batch picked: submit one above, or pick one in the table"
    done, failed, total = counts(b)
    lines = [f"**{b.id}** · {b.status} · {b.endpoint} · {done} completed, {failed} failed of {total}",
             f"input `{b.input_file_id}` · output `{b.output_file_id or '-'}` · errors `{b.error_file_id or '-'}`"]
    if b.errors and b.errors.data:
        lines.append("problems: " + "; ".join(e.message for e in b.errors.data))
    if b.metadata:
        lines.append("metadata: " + ", ".join(f"{k}={v}" for k, v in b.metadata.items()))
    return "  \n".join(lines)


def refresh(client: openai.OpenAI, picked: str | None, seen: str = "") -> tuple[Any, ...]:
    """The table, the bars (running batches and the picked one), the picker and details, and what they showed (one
    list call; the components are skipped when nothing changed since `seen`)."""
    try:
        listing = client.batches.list(limit=LISTED).data
        pick = next((b for b in listing if b.id == picked), None)
        if picked and pick is None:
            pick = client.batches.retrieve(picked)
    except SDK_ERRORS as err:
        raise ui_error(err) from None
    rows = [batch_row(b) for b in listing]
    html = "".join(batch_bar(b) for b in listing if b.status in RUNNING or b.id == picked)
    ids = [b.id for b in listing]
    if pick is not None and pick.id not in ids:
        html += batch_bar(pick)
    sig = json.dumps([rows, html, picked, pick.model_dump() if pick else None], default=str)
    if sig == seen:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen
    choices = ids if not picked or picked in ids else [picked, *ids]
    return (gr.Dataframe(value=rows or None, headers=COLUMNS), html or '<div class="hub-budget">no batch running</div>',
            gr.Dropdown(choices=choices, value=picked), batch_details(pick), sig)


# ---- acting on one ----

def cancel_batch(client: openai.OpenAI, batch_id: str | None) -> str:
    """Cancel a batch: running lines finish, no new ones start."""
    if not batch_id:
        raise gr.Error("pick a batch to cancel (click its row in the table)")
    try:
        b = client.batches.cancel(batch_id)
    except SDK_ERRORS as err:
        raise ui_error(err) from None
    return f"{b.id}: {b.status} (lines already running finish; the rest go to the error file)"


def download_results(client: openai.OpenAI, batch_id: str | None) -> tuple[Any, Any, str]:
    """The batch's output and error files, written to .jsonl files for download (hidden where it has none)."""
    if not batch_id:
        raise gr.Error("pick a batch to download (click its row in the table)")
    try:
        b = client.batches.retrieve(batch_id)
        folder = Path(tempfile.mkdtemp(prefix="hub-batch-"))
        files = []
        for kind, fid in (("output", b.output_file_id), ("errors", b.error_file_id)):
            if fid is None:
                files.append(gr.File(value=None, visible=False))
                continue
            path = folder / f"{b.id}-{kind}.jsonl"
            path.write_bytes(client.files.content(fid).content)
            files.append(gr.File(value=str(path), visible=True))
    except SDK_ERRORS as err:
        raise ui_error(err) from None
    if b.output_file_id is None and b.error_file_id is None:
        raise gr.Error(f"{b.id} is {b.status}: its output file is written when it ends; wait for it, or cancel it")
    return files[0], files[1], f"{b.id}: {b.status}, results ready to download"
