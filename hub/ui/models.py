"""The Models tab: every model's state, the memory budget bars, load/unload, pulls (downloads of a model's hub
repo source, with a live bar per download), and a failed model's log tail."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from hub.downloads.status import describe_download
from hub.ui.clients import Admin, AdminError
from hub.ui.common import POLL_S, bar_html, ui_error, wait_for

# state early: phones scroll; "running / waiting": requests in flight / in the model's queue
COLUMNS = ["id", "state", "type", "engine", "runtime", "memory", "running / waiting", "last used"]
REFRESH_S = 2.0
RECENT_S = 600.0  # a finished download keeps its bar this long (what happened to a pull is seen, then it goes)


def build(demo: gr.Blocks, admin: Admin) -> gr.Dropdown:
    """The Models tab's components and events (inside `demo`); returns its model picker for the app to fill."""
    with gr.Tab("Models", id="models") as tab:
        budget = gr.HTML("", elem_id="hub-budget")
        downloads = gr.HTML("", elem_id="hub-downloads")
        table = gr.Dataframe(headers=COLUMNS, value=[], interactive=False, wrap=True, elem_id="hub-models",
                             label="models (refreshed every few seconds)")
        with gr.Row():
            model = gr.Dropdown(label="model", choices=[], scale=2, min_width=160, elem_id="hub-admin-model")
            load = gr.Button("load", variant="primary", min_width=80, elem_id="hub-load")
            unload = gr.Button("unload", variant="secondary", min_width=80, elem_id="hub-unload")
            pull = gr.Button("pull", variant="secondary", min_width=80, elem_id="hub-pull")
            cancel = gr.Button("cancel pull", variant="stop", min_width=80, elem_id="hub-cancel-pull")
        status = gr.Markdown("", elem_classes=["hub-status"], elem_id="hub-admin-status")
        logs = gr.Textbox(label="log tail of a failed model", lines=10, max_lines=20, interactive=False,
                          elem_id="hub-logs")
        timer = gr.Timer(REFRESH_S)

    def refresh(selected: str | None) -> tuple[list[list[str]], str, str, str]:
        return refresh_models(admin, selected)

    def do_load(picked: str | None) -> Iterator[str]:
        yield from load_model(admin, picked)

    def do_pull(picked: str | None) -> Iterator[str]:
        yield from pull_model(admin, picked)

    outs = [table, budget, logs, downloads]
    timer.tick(refresh, model, outs, show_progress="hidden", queue=False)
    tab.select(refresh, model, outs, show_progress="hidden")
    demo.load(refresh, model, outs, show_progress="hidden")
    load.click(do_load, model, status).then(refresh, model, outs)
    unload.click(lambda m: unload_model(admin, m), model, status).then(refresh, model, outs)
    pull.click(do_pull, model, status).then(refresh, model, outs)
    cancel.click(lambda m: cancel_pull(admin, m), model, status, queue=False).then(refresh, model, outs)
    return model


# ---- handlers ----

def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    ago = max(0.0, now - ts)
    return f"{ago:.0f}s ago" if ago < 120 else f"{ago / 60:.0f}m ago" if ago < 7200 else f"{ago / 3600:.0f}h ago"


def model_rows(listing: dict[str, Any]) -> list[list[str]]:
    """The Models table: one row per model."""
    now = listing.get("time") or time.time()
    rows = []
    for m in listing.get("data", []):
        mem = m.get("budget_gb") if m.get("budget_gb") is not None else m.get("memory_gb")
        requests = f"{m.get('in_flight', 0)} / {m.get('queued', 0)}"
        state = m["state"]
        job = m.get("download") or {}
        if state == "downloading" and job:
            state = f"downloading: {describe_download(job)}"
        elif job.get("status") in ("queued", "checking", "downloading"):  # a pull ahead of its first request
            state = f"{state}, pulling: {describe_download(job)}"
        if m.get("pending"):  # what a registry reload left to do
            state = f"{state}: {m['pending']}"
        rows.append([m["id"], state, m["type"], m["engine"], m.get("runtime", "-"),
                     f"{mem:g} GB" if mem else "-", requests, _ago(m.get("last_used"), now)])
    return rows


def budget_html(listing: dict[str, Any]) -> str:
    """One bar per host: memory in use over its budget (and the RAM its sleeping models hold)."""
    parts = []
    for b in listing.get("budgets", []):
        used, total = b.get("used_gb") or 0.0, b.get("budget_gb")
        asleep, sleep_total = b.get("sleep_used_gb") or 0.0, b.get("sleep_budget_gb")
        sleeping = ""
        if asleep or sleep_total is not None:  # RAM held by sleeping models (not in the memory budget)
            sleeping = f"; asleep: {asleep:g}" + (f" / {sleep_total:g}" if sleep_total is not None else "") + " GB RAM"
        if total:
            pct = min(100.0, 100.0 * used / total)
            level = "hot" if pct >= 90 else "warm" if pct >= 70 else "ok"
            label = f"memory {b['host']}: {used:g} / {total:g} GB ({pct:.0f}%){sleeping}"
            parts.append(bar_html(label, used, total, f"memory budget {b['host']}", level))
        else:
            parts.append(f'<div class="hub-budget"><div class="hub-budget-label">memory {b["host"]}: {used:g} GB '
                         f'in use (no budget set){sleeping}</div></div>')
    return "".join(parts) or '<div class="hub-budget">no hosts</div>'


def failed_logs(admin: Admin, listing: dict[str, Any], selected: str | None) -> str:
    """The log tail of the selected model if it failed, else of the first failed model, else a short note."""
    failed = [m for m in listing.get("data", []) if m["state"] == "failed"]
    pick = next((m for m in failed if m["id"] == selected), failed[0] if failed else None)
    if pick is None:
        return "no failed model: logs of a model that fails to start or crashes show up here"
    try:
        tail = admin.logs(pick["id"])
    except AdminError as err:
        tail = f"(logs unavailable: {err})"
    return f"{pick['id']} failed: {pick.get('reason') or 'no reason given'}\n\n{tail}"


def downloads_html(jobs: list[dict[str, Any]], now: float | None = None) -> str:
    """One live bar per download under way (bytes over the total), and the ones that ended in the last minutes with
    how they ended; "" when there are none."""
    now = time.time() if now is None else now
    parts = []
    for job in jobs:
        ended = job.get("finished_at")
        if ended and now - ended > RECENT_S:
            continue
        who = ", ".join(job.get("models") or []) or job.get("repo", "?")
        label = f"pull {who} ({job.get('repo')}): {describe_download(job)}"  # bar_html escapes it
        status = job.get("status")
        total = job.get("bytes_total") or 0
        done = total if status == "done" else job.get("bytes_done") or 0
        level = "hot" if status in ("failed", "cancelled") else "ok"
        parts.append(bar_html(label, done, total, f"download {job.get('repo')}", level))
    return "".join(parts)


def refresh_models(admin: Admin, selected: str | None = None) -> tuple[list[list[str]], str, str, str]:
    """The table, the budget bars, the failed model's log tail and the download bars."""
    try:
        listing = admin.models()
        jobs = admin.downloads()
    except AdminError as err:
        raise ui_error(err) from None
    return model_rows(listing), budget_html(listing), failed_logs(admin, listing, selected), downloads_html(jobs)


def pull_model(admin: Admin, model: str | None, poll: float = POLL_S) -> Iterator[str]:
    """Download a model's source ahead of its first request (or join the pull under way); yields its progress line
    until the download ends. Leaving the page does not stop it: "cancel pull" does."""
    if not model:
        raise gr.Error("pick a model to pull")
    try:
        job = admin.pull(model)
        while job.get("status") not in ("done", "failed", "cancelled"):
            yield f"pulling {model}: {describe_download(job)}"
            time.sleep(poll)
            job = admin.download(job["id"])
    except AdminError as err:
        raise ui_error(err) from None
    if job["status"] == "failed":
        raise gr.Error(f"pull of {model} failed: {job.get('error') or 'unknown error'}")
    if job["status"] == "cancelled":
        yield f"pull of {model} cancelled"
        return
    yield f"{model}: {describe_download(job)} ({job.get('path') or job.get('cache_dir')})"


def cancel_pull(admin: Admin, model: str | None) -> str:
    """Cancel the download under way of the selected model's source."""
    if not model:
        raise gr.Error("pick a model whose pull to cancel")
    try:
        running = [j for j in admin.downloads() if model in (j.get("models") or [])
                   and j.get("status") not in ("done", "failed", "cancelled")]
        if not running:
            raise gr.Error(f"no pull of {model} is under way")
        job = admin.cancel_download(running[0]["id"])
    except AdminError as err:
        raise ui_error(err) from None
    return f"pull of {model}: {job.get('status')}"


def load_model(admin: Admin, model: str | None, poll: float = POLL_S) -> Iterator[str]:
    """Start a model; yields 'starting <model>... Ns' until it is ready, then its state."""
    if not model:
        raise gr.Error("pick a model to load")
    try:
        waiting = wait_for(lambda: admin.load(model), admin, model, "loading", poll)
        try:
            while True:
                yield next(waiting)
        except StopIteration as stop:
            entry = stop.value
    except AdminError as err:
        raise gr.Error(f"{err} (the log tail is below)") from None
    yield f"{model}: {entry['state']}"


def unload_model(admin: Admin, model: str | None) -> str:
    """Stop a model."""
    if not model:
        raise gr.Error("pick a model to unload")
    try:
        entry = admin.unload(model)
    except AdminError as err:
        raise ui_error(err) from None
    return f"{model}: {entry['state']}"
