"""The Models tab: every model's state, the memory budget bars, load/unload, and a failed model's log tail."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from hub.ui.clients import Admin, AdminError
from hub.ui.common import POLL_S, bar_html, ui_error, wait_for

# state early: phones scroll; "running / waiting": requests in flight / in the model's queue
COLUMNS = ["id", "state", "type", "engine", "runtime", "memory", "running / waiting", "last used"]
REFRESH_S = 2.0


def build(demo: gr.Blocks, admin: Admin) -> gr.Dropdown:
    """The Models tab's components and events (inside `demo`); returns its model picker for the app to fill."""
    with gr.Tab("Models", id="models") as tab:
        budget = gr.HTML("", elem_id="hub-budget")
        table = gr.Dataframe(headers=COLUMNS, value=[], interactive=False, wrap=True, elem_id="hub-models",
                             label="models (refreshed every few seconds)")
        with gr.Row():
            model = gr.Dropdown(label="model", choices=[], scale=2, min_width=160, elem_id="hub-admin-model")
            load = gr.Button("load", variant="primary", min_width=80, elem_id="hub-load")
            unload = gr.Button("unload", variant="secondary", min_width=80, elem_id="hub-unload")
        status = gr.Markdown("", elem_classes=["hub-status"], elem_id="hub-admin-status")
        logs = gr.Textbox(label="log tail of a failed model", lines=10, max_lines=20, interactive=False,
                          elem_id="hub-logs")
        timer = gr.Timer(REFRESH_S)

    def refresh(selected: str | None) -> tuple[list[list[str]], str, str]:
        return refresh_models(admin, selected)

    def do_load(picked: str | None) -> Iterator[str]:
        yield from load_model(admin, picked)

    outs = [table, budget, logs]
    timer.tick(refresh, model, outs, show_progress="hidden", queue=False)
    tab.select(refresh, model, outs, show_progress="hidden")
    demo.load(refresh, model, outs, show_progress="hidden")
    load.click(do_load, model, status).then(refresh, model, outs)
    unload.click(lambda m: unload_model(admin, m), model, status).then(refresh, model, outs)
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
        state = f"{m['state']}: {m['pending']}" if m.get("pending") else m["state"]  # a registry reload's
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


def refresh_models(admin: Admin, selected: str | None = None) -> tuple[list[list[str]], str, str]:
    """The table, the budget bars and the failed model's log tail."""
    try:
        listing = admin.models()
    except AdminError as err:
        raise ui_error(err) from None
    return model_rows(listing), budget_html(listing), failed_logs(admin, listing, selected)


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
