"""Running a grid against a hub with the official openai client: a few cells at a time, each cell timed, its result
recorded as it ends (hub/lab/store.py), progress on a bar.

Text cells stream (`stream_options.include_usage`), which gives the time to the first token; tokens_per_s is the
decode rate after it, (completion tokens - 1) / (total - first token), as vLLM's benchmark derives it from TPOT (an
engine that sends its tokens in bursts inflates it), and output_tokens_per_s is completion tokens / total time.
Before its first cell, a run loads the grid's models side by side (`warm`), so a cold start is not timed as a
cell's first token. Image cells ask the image server for its stream
(with no previews) to see each denoising step; an engine that does not stream images answers with JSON, read the
same way. Cells of one shape (model, size, steps, guidance, negative prompt) are sent next to each other, so the
image server runs them as one batch (its max_batch) when the concurrency lets them queue together.

A failed cell is a row with its error; the run goes on. Stop (a `stop` event, or Ctrl-C in a notebook) lets the
cells under way end, keeps them, and marks the run interrupted: `resume` runs the cells it lacks.
"""

from __future__ import annotations

import base64
import inspect
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx
import openai
from tqdm.auto import tqdm

from hub.client import Admin, AdminError, error_message
from hub.config import client_api_key, client_url
from hub.lab import store
from hub.lab.grid import Cell, Grid
from hub.sse import sse

OnCell = Callable[[dict[str, Any]], None]
OnStep = Callable[[Cell, int, int], None]
CHAT_KWARGS = frozenset(inspect.signature(openai.resources.chat.Completions.create).parameters) - {"self"}
IMAGE_KWARGS = frozenset({"size", "quality", "background", "output_format", "output_compression", "style", "user"})


class CellError(Exception):
    """A cell's request failed: its message is the row's error."""


class Stopped(Exception):
    """The run was asked to stop while this cell was under way."""


def make_client(url: str | None = None, api_key: str | None = None, timeout: float = 600.0) -> openai.OpenAI:
    """The openai client on a hub's /v1: `url` (with or without /v1), else $HUB_URL; `api_key`, else
    $HUB_API_KEY."""
    base = (url or client_url()).rstrip("/").removesuffix("/v1")
    return openai.OpenAI(base_url=base + "/v1", api_key=api_key or client_api_key() or "no-key", max_retries=0,
                         timeout=openai.Timeout(timeout, connect=10.0))


def hub_of(client: openai.OpenAI) -> str:
    """The hub's URL (without /v1) of a client on its /v1."""
    return str(client.base_url).rstrip("/").removesuffix("/v1")


def describe_models(client: openai.OpenAI, models: list[str]) -> tuple[dict[str, Any], str | None]:
    """The registry entries (secrets hidden) of the models a run uses, and the hub's version, from its admin API.
    A hub that cannot say (an older one, or another OpenAI-compatible server) leaves a note instead."""
    admin = Admin(hub_of(client), client.api_key if client.api_key != "no-key" else None, timeout=10.0)
    found: dict[str, Any] = {}
    version = None
    try:
        for m in models:
            try:
                entry = admin.model(m)
                if not isinstance(entry, dict):
                    raise ValueError(f"GET /hub/models/{m} gave no model entry")
            except (AdminError, httpx.HTTPError, ValueError) as err:  # not JSON: a server other than a hub
                found[m] = {"error": str(err) or type(err).__name__}
                continue
            version = entry.get("version") or version
            found[m] = {"type": entry.get("type"), "engine": entry.get("engine"), "host": entry.get("host"),
                        **(entry.get("config") or {})}
    finally:
        admin.close()
    return found, version


# ---- one cell ----

def _split(settings: dict[str, Any], known: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Settings the SDK method takes as arguments, and the rest (engine extras) for extra_body."""
    kwargs = {k: v for k, v in settings.items() if k in known and v is not None}
    extra = {k: v for k, v in settings.items() if k not in known and v is not None}
    return kwargs, extra


def _failure(err: BaseException, hub: str) -> str:
    """A cell's error as one line."""
    if isinstance(err, openai.APIStatusError):
        return f"{err.status_code}: {error_message(err.body, err.message)}"
    if isinstance(err, openai.APITimeoutError):
        return f"timeout: {hub} did not answer in time"
    if isinstance(err, openai.APIConnectionError):
        return f"cannot reach the hub at {hub}: is `hub serve` running?"
    return f"{type(err).__name__}: {err}" if not isinstance(err, CellError) else str(err)


def text_cell(client: openai.OpenAI, grid: Grid, cell: Cell, stop: threading.Event) -> dict[str, Any]:
    """Run a text cell: the answer, finish reason, time to first token, total time, tokens and tokens/s."""
    kwargs, extra = _split(cell.settings, CHAT_KWARGS)
    kwargs.pop("stream", None)
    t0 = time.perf_counter()
    ttft = None
    parts: list[str] = []
    reasoning: list[str] = []
    finish = usage = None
    stream = client.chat.completions.create(model=cell.model, messages=grid.messages(cell), stream=True,
                                            stream_options={"include_usage": True}, extra_body=extra or None,
                                            **kwargs)
    with stream:
        for chunk in stream:
            if stop.is_set():
                raise Stopped
            for choice in chunk.choices:
                delta = choice.delta
                more = delta.model_extra or {}
                think = more.get("reasoning_content") or more.get("reasoning")
                if (delta.content or think or delta.tool_calls) and ttft is None:
                    ttft = time.perf_counter() - t0
                if delta.content:
                    parts.append(delta.content)
                if isinstance(think, str):
                    reasoning.append(think)
                if choice.finish_reason:
                    finish = choice.finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
    total = time.perf_counter() - t0
    out = usage.completion_tokens if usage else None
    rate = None
    if out and ttft is not None and out > 1 and total > ttft:
        rate = (out - 1) / (total - ttft)
    row = {"answer": "".join(parts), "finish_reason": finish, "ttft_s": ttft, "total_s": total,
           "prompt_tokens": usage.prompt_tokens if usage else None, "completion_tokens": out, "tokens_per_s": rate,
           "output_tokens_per_s": out / total if out and total > 0 else None}
    if reasoning:
        row["reasoning"] = "".join(reasoning)
    return row


def image_cell(client: openai.OpenAI, cell: Cell, stop: threading.Event,
               on_step: OnStep | None = None) -> tuple[dict[str, Any], bytes]:
    """Run an image cell (one image): its total time and steps/s, and the PNG bytes."""
    kwargs, extra = _split(cell.settings, IMAGE_KWARGS)
    extra.pop("n", None)
    t0 = time.perf_counter()
    data: bytes | None = None
    steps_done = 0
    with client.images.with_streaming_response.generate(
            model=cell.model, prompt=str(cell.prompt), n=1, response_format="b64_json", stream=True,
            partial_images=0, extra_body=extra or None, **kwargs) as resp:
        if not resp.headers.get("content-type", "").startswith("text/event-stream"):
            items = json.loads(resp.read()).get("data") or []
            data = base64.b64decode(items[0]["b64_json"]) if items and items[0].get("b64_json") else None
        else:
            for event, text in sse(resp.iter_lines()):
                if stop.is_set():
                    raise Stopped
                if event == "comment":
                    if text.startswith("progress "):
                        p = json.loads(text.removeprefix("progress "))
                        steps_done = int(p.get("step") or 0)
                        if on_step is not None:
                            on_step(cell, steps_done, int(p.get("steps") or 0))
                    continue
                body = json.loads(text)
                kind = body.get("type", event)
                if kind == "error" or "error" in body:
                    raise CellError(error_message(body, "the image model failed while it worked: see its logs"))
                if kind.endswith(".completed") and body.get("b64_json"):
                    data = base64.b64decode(body["b64_json"])
    if data is None:
        raise CellError(f"{cell.model} answered without an image: see `hub logs {cell.model}`")
    total = time.perf_counter() - t0
    return {"total_s": total, "steps_per_s": steps_done / total if steps_done else None}, data


def cell_row(grid: Grid, cell: Cell) -> dict[str, Any]:
    """The columns that say what a cell asked: its key, model, prompt, settings, repeat and place in a plot."""
    row: dict[str, Any] = {"cell": cell.key, "model": cell.model, "prompt": cell.text,
                           "prompt_index": cell.prompt_index, "repeat": cell.repeat, **cell.settings, **cell.place}
    if not isinstance(cell.prompt, str):
        row["messages"] = json.dumps(cell.prompt)
    if grid.system:
        row["system"] = grid.system
    return row


def run_cell(client: openai.OpenAI, grid: Grid, cell: Cell, run: store.Run, stop: threading.Event,
             on_step: OnStep | None = None) -> dict[str, Any] | None:
    """Run one cell and record it (with its error if it failed); None when stopped before it ended."""
    row = {**cell_row(grid, cell), "started_at": time.time(), "error": None}
    image = None
    try:
        if grid.kind == "image":
            result, image = image_cell(client, cell, stop, on_step)
        else:
            result = text_cell(client, grid, cell, stop)
        row.update(result)
    except Stopped:
        return None
    except Exception as err:  # a failed cell is a row with its error: the run goes on
        if stop.is_set():
            return None
        row["error"] = _failure(err, hub_of(client))
    return run.record(row, image)


# ---- a whole grid ----

def order(grid: Grid, cells: list[Cell]) -> list[Cell]:
    """Image cells of one shape next to each other (the image server batches them); text cells as they come."""
    if grid.kind != "image":
        return cells

    def shape(c: Cell) -> str:  # what the image server's batch key holds: not the prompts, nor the seed
        s = {k: v for k, v in c.settings.items() if k not in ("seed", "negative_prompt")}
        return json.dumps([c.model, sorted(s.items()), c.settings.get("negative_prompt") is None], default=str)

    first: dict[str, int] = {}
    for i, c in enumerate(cells):
        first.setdefault(shape(c), i)
    return sorted(cells, key=lambda c: first[shape(c)])


def execute(run: store.Run, grid: Grid, client: openai.OpenAI, *, concurrency: int = 4, progress: bool = True,
            retry_errors: bool = False, stop: threading.Event | None = None, on_cell: OnCell | None = None,
            on_step: OnStep | None = None) -> store.Run:
    """Run the grid's cells that `run` does not hold yet, at most `concurrency` at once; finish the run."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    stop = stop or threading.Event()
    done = run.done(retry_errors)
    todo = order(grid, [c for c in grid.cells() if c.key not in done])
    run.save_manifest(status="running", cells_total=grid.size)
    bar = tqdm(total=grid.size, initial=grid.size - len(todo), desc=run.manifest.name or run.id, unit="cell",
               disable=not progress)
    pending: set[Future] = set()
    status: store.RunStatus = "done"
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="lab") as pool:
            queue = iter(todo)
            try:
                while True:
                    while len(pending) < concurrency and not stop.is_set():
                        cell = next(queue, None)
                        if cell is None:
                            break
                        pending.add(pool.submit(run_cell, client, grid, cell, run, stop, on_step))
                    if not pending:
                        break
                    finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for f in finished:
                        row = f.result()
                        if row is not None:
                            bar.update(1)
                            bar.set_postfix(errors=run.manifest.errors, refresh=False)
                            if on_cell is not None:
                                on_cell(row)
            except BaseException:
                stop.set()  # Ctrl-C, or a callback that raised: the cells under way end, the rest are not sent
                for f in pending:
                    f.cancel()
                raise
        if stop.is_set() and len(run.done()) < grid.size:
            status = "interrupted"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        bar.close()
        run.finish(status, [c.key for c in grid.cells()])
    return run


def warm(models: list[str], *, url: str | None = None, api_key: str | None = None,
         client: openai.OpenAI | None = None, timeout: float = 900.0) -> dict[str, str]:
    """Load models on a hub side by side and wait for them: each model's state, or why it could not load (a hub
    whose budget cannot hold them all swaps them as usual; a server without the /hub API says so)."""
    client = client or make_client(url, api_key)
    admin = Admin(hub_of(client), client.api_key if client.api_key != "no-key" else None, timeout=timeout)

    def load(model: str) -> str:
        try:
            entry = admin.load(model, timeout=timeout)
            if not isinstance(entry, dict):
                raise ValueError(f"POST /hub/models/{model}/load gave no model entry")
            return str(entry.get("state"))
        except (AdminError, httpx.HTTPError, ValueError) as err:  # not JSON: a server other than a hub
            return f"not loaded: {str(err) or type(err).__name__}"

    try:
        with ThreadPoolExecutor(max_workers=max(1, len(models)), thread_name_prefix="lab-warm") as pool:
            return dict(zip(models, pool.map(load, models), strict=True))
    finally:
        admin.close()


def run(grid: Grid, *, url: str | None = None, api_key: str | None = None, client: openai.OpenAI | None = None,
        name: str = "", concurrency: int = 4, progress: bool = True, root: str | None = None,
        stop: threading.Event | None = None, on_cell: OnCell | None = None, on_step: OnStep | None = None,
        timeout: float = 600.0, warm_up: bool = True) -> store.Run:
    """Run a grid against a hub (`url`, else $HUB_URL) and keep it as a run: returns the Run (`.table` is a
    DataFrame). `concurrency` cells at a time; a tqdm bar (a widget in notebooks) unless `progress` is False;
    the grid's models loaded first unless `warm_up` is False (their states go in the manifest as `warmed`)."""
    if concurrency < 1:  # before the run folder exists: it would stay "running" with no cell
        raise ValueError("concurrency must be at least 1")
    client = client or make_client(url, api_key, timeout)
    used = list(dict.fromkeys(c.model for c in grid.cells()))
    models, version = describe_models(client, sorted(used))
    warmed = warm(used, client=client) if warm_up else {}
    new = store.create(grid.kind, name, root=root, grid=grid.model_dump(mode="json"), models=models,
                       hub_url=hub_of(client), hub_version=version, cells_total=grid.size, warmed=warmed)
    return execute(new, grid, client, concurrency=concurrency, progress=progress, stop=stop, on_cell=on_cell,
                   on_step=on_step)


def resume(run_id: str | store.Run, *, url: str | None = None, api_key: str | None = None,
           client: openai.OpenAI | None = None, concurrency: int = 4, progress: bool = True,
           root: str | None = None, retry_errors: bool = False, stop: threading.Event | None = None,
           on_cell: OnCell | None = None, on_step: OnStep | None = None, timeout: float = 600.0) -> store.Run:
    """Run the cells an interrupted (or killed) run lacks, against the hub it ran on unless `url` says otherwise;
    `retry_errors` runs its failed cells again too."""
    old = store.load(run_id, root)
    if old.manifest.grid is None:
        raise ValueError(f"run {old.id} is a {old.manifest.kind} run, not a grid: there is nothing to resume")
    grid = Grid.model_validate(old.manifest.grid)
    client = client or make_client(url or old.manifest.hub_url, api_key, timeout)
    return execute(old, grid, client, concurrency=concurrency, progress=progress, retry_errors=retry_errors,
                   stop=stop, on_cell=on_cell, on_step=on_step)
