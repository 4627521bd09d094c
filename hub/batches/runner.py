"""The batch runner: a task in the hub's process that sends the pending lines of active batches through the hub's
own request path and records each result.

Each line goes to the gateway as an in-process ASGI request (`local_post`), marked background work
(`hub.background` in the scope's extensions: the gateway acquires its model with `background=True`, see
hub/manager/queue.py), so that the route table's checks, starts, queues, the budget, timeouts and metrics all apply
as to any client's request. The runner keeps up to `cap(model)` lines of each model under way.

A line is claimed (marked running) before it is sent and recorded (done or failed, with its result, in one
transaction) after its answer: a hub stopped or killed between the two leaves it running, and the next hub's
`start` makes it pending again, so it is sent again (at least once to the engine) and recorded once. Answers that
say "later" (429, 502, 503, 504) are tried again, with a growing pause: the hub's own "busy, wait" (WAITING: a full
queue, memory held by busy models) until the batch ends, the others up to MAX_ATTEMPTS, then recorded as failed.

A batch ends when no line is pending or running (completed), after a cancel once its running lines have finished
(cancelled: the pending ones are marked so), or at its expiry (expired: the pending and running ones are marked so,
the running ones are cancelled). Its output and error files are written then (`finish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message

from hub.batches.store import ACTIVE, Store
from hub.gateway import BACKGROUND

log = logging.getLogger("hub.batches")
T = TypeVar("T")
TICK_S = 1.0  # the longest the runner sleeps between looks at the batches (a new line, cancel or end wakes it)
MAX_ATTEMPTS = 3
RETRY = frozenset({429, 502, 503, 504})
# The hub's own "later" (hub/errors.py codes): the model is busy, starting or waiting for memory. A line that gets
# one is tried again until its batch ends, however long; other RETRY answers (a failed start, an engine that broke
# off) MAX_ATTEMPTS times in all.
WAITING = frozenset({"queue_full", "queue_timeout", "memory_busy", "model_unavailable"})
MAX_BACKOFF_S = 30.0


class Db:
    """A Store used from one worker thread only: every call runs there, in the order the calls were made."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="hub-db")
        self.store: Store | None = None

    async def open(self, make: Callable[[], Store]) -> Store:
        """Open the store in the worker thread."""
        self.store = await self.run(make)
        return self.store

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """fn(*args, **kw) in the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, partial(fn, *args, **kw))

    async def close(self) -> None:
        """Close the store and stop the thread."""
        if self.store is not None:
            await self.run(self.store.close)
        self.pool.shutdown(wait=True)


async def local_post(app: ASGIApp, host: str, path: str, body: bytes) -> tuple[int, bytes, str | None]:
    """POST `body` to `app` (the gateway) in-process as a background request: its status, body and x-request-id."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", host.encode()), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 0), "server": None, "extensions": {BACKGROUND: {}}}
    sent, never = False, asyncio.Event()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # the "client" stays until the request ends (or the caller is cancelled)
        return {"type": "http.disconnect"}

    status, chunks, request_id = 0, [], None

    async def send(msg: Message) -> None:
        nonlocal status, request_id
        if msg["type"] == "http.response.start":
            status = msg["status"]
            request_id = next((v.decode("latin-1") for k, v in msg.get("headers", ()) if k == b"x-request-id"), None)
        elif msg["type"] == "http.response.body":
            chunks.append(msg.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks), request_id


def error_code(data: bytes) -> str | None:
    """The `code` of an OpenAI-shaped error body, if it is one."""
    body = parsed(data)
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def parsed(data: bytes) -> Any:
    """An answer's body as JSON where it is JSON, else as text."""
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", errors="replace")


class Runner:
    """Runs the lines of active batches (see the module's docstring). `send(path, body)` sends one line's request
    (local_post on the gateway); `cap(model)` is how many lines of a model may be under way at once; `observe(model,
    state, n)` counts recorded lines (metrics)."""

    def __init__(self, db: Db, send: Callable[[str, bytes], Awaitable[tuple[int, bytes, str | None]]],
                 cap: Callable[[str], int], observe: Callable[[str, str, int], None] | None = None,
                 retry_s: float = 1.0, base: Callable[[str], str] = str) -> None:
        self.db, self.send, self.cap, self.observe, self.retry_s = db, send, cap, observe, retry_s
        self.base = base  # the model a line's model id runs on (a LoRA adapter's lines count as its model's)
        self.wakeup = asyncio.Event()
        self.lines: dict[tuple[str, int], asyncio.Task] = {}
        self.per_model: Counter[str] = Counter()
        # the models each active batch still has pending lines for: read once, dropped as their lines run out
        # (lines become pending only at start, so the set only shrinks); a round costs no scan of the lines
        self.pending: dict[str, set[str]] = {}
        self.task: asyncio.Task | None = None
        self.backing_off: set[tuple[str, int]] = set()  # lines waiting to be tried again (a cancel drops them)

    @property
    def store(self) -> Store:
        assert self.db.store is not None, "the runner runs on an open store"
        return self.db.store

    async def start(self) -> None:
        """Lines a stopped or killed hub left running are pending again; then the loop starts."""
        if n := await self.db.run(self.store.requeue_running):
            log.warning("%d batch line(s) were under way when the hub stopped: they are sent again", n)
        self.task = asyncio.create_task(self._loop(), name="hub-batches")

    def wake(self) -> None:
        """Look at the batches now (a batch was made or cancelled, a line ended)."""
        self.wakeup.set()

    async def stop(self) -> None:
        """Stop the loop and the lines under way (they stay running in the database: the next start sends them
        again)."""
        tasks = [t for t in (self.task, *self.lines.values()) if t]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            self.wakeup.clear()
            try:
                await self.tick()
            except Exception:  # a bug: logged, and the loop goes on
                log.exception("the batch runner failed a round")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), TICK_S)

    async def tick(self) -> None:
        """One look at every active batch, oldest first: end it, or send its pending lines where there is room."""
        now = time.time()
        for b in reversed(await self.db.run(self.store.batches, None, 1_000_000, ACTIVE)):
            bid, under_way = b["id"], any(k[0] == b["id"] for k in self.lines)
            if b["status"] == "finalizing":  # a hub stopped while it wrote the files
                await self.finish(b, "cancelled" if b["cancelling_at"] else "expired" if b["expired_at"]
                                  else "completed")
            elif b["expires_at"] and now >= b["expires_at"] and b["status"] in ("in_progress", "cancelling"):
                await self.expire(b)
            elif b["status"] == "cancelling":
                for key in [k for k in self.backing_off if k[0] == bid]:
                    self.lines[key].cancel()  # not under way at an engine: it stays unsent (cancelled below)
                if not under_way:
                    await self.close(bid, "cancelled", "the batch was cancelled before this request was sent")
                    await self.finish(b, "cancelled")
            elif b["status"] == "in_progress":
                if bid not in self.pending:
                    self.pending[bid] = set(await self.db.run(self.store.pending_models, bid))
                models = self.pending[bid]
                for m in sorted(models):
                    room = self.cap(m) - self.per_model[self.base(m)]
                    if room > 0:
                        rows = await self.db.run(self.store.claim, bid, m, room)
                        for row in rows:
                            self._spawn(bid, row)
                        if len(rows) < room:
                            models.discard(m)
                if not models and not any(k[0] == bid for k in self.lines):
                    await self.finish(b, "completed")

    def _spawn(self, bid: str, row: dict[str, Any]) -> None:
        self.per_model[self.base(row["model"])] += 1
        key = (bid, row["line"])
        self.lines[key] = asyncio.create_task(self._run_line(bid, row), name=f"batch-{bid}-{row['line']}")

    async def _run_line(self, bid: str, row: dict[str, Any]) -> None:
        """Send one line (again while its answer says "later"), then record its result."""
        try:
            attempts = row["attempts"]
            try:
                while True:
                    status, data, request_id = await self.send(row["url"], row["body"].encode())
                    waits = status in RETRY and error_code(data) in WAITING
                    if status not in RETRY or (attempts >= MAX_ATTEMPTS and not waits):
                        break
                    attempts += 1
                    self.backing_off.add((bid, row["line"]))
                    try:
                        await asyncio.sleep(min(MAX_BACKOFF_S, self.retry_s * 2 ** min(attempts - 1, 10)))
                    finally:
                        self.backing_off.discard((bid, row["line"]))
                response = {"status_code": status, "request_id": request_id or f"req_{secrets.token_hex(12)}",
                            "body": parsed(data)}
                result = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": row["custom_id"],
                          "response": response, "error": None}
                state = "done" if 200 <= status < 400 else "failed"
            except Exception as err:  # a bug on the hub's side: the line fails, saying so
                log.exception("batch %s line %d failed", bid, row["line"])
                result = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": row["custom_id"],
                          "response": None, "error": {"code": "internal_error", "message": f"{type(err).__name__}: "
                                                      f"{err} (the hub's log has its traceback)"}}
                state = "failed"
            if await self.db.run(self.store.record, bid, row["line"], state, result) and self.observe:
                self.observe(row["model"], "completed" if state == "done" else "failed", 1)
        finally:
            self.per_model[self.base(row["model"])] -= 1
            self.lines.pop((bid, row["line"]), None)
            self.wake()

    async def expire(self, b: dict[str, Any]) -> None:
        """The batch's window is over: cancel its lines under way, mark the rest expired, write its files."""
        mine = [t for k, t in self.lines.items() if k[0] == b["id"]]
        for t in mine:
            t.cancel()
        await asyncio.gather(*mine, return_exceptions=True)
        await self.close(b["id"], "expired", f"the batch's completion_window ({b['completion_window']}) ended before "
                                             "this request was done")
        await self.db.run(self.store.set_batch, b["id"], expired_at=int(time.time()))
        await self.finish(b, "expired")

    async def close(self, bid: str, state: str, why: str) -> None:
        """Mark the batch's lines not yet done or failed `state` (expired, cancelled), each with its error."""
        counts = await self.db.run(self.store.close_lines, bid, state, {"code": f"batch_{state}", "message": why})
        for model, n in counts.items():
            if self.observe:
                self.observe(model, state, n)

    async def finish(self, b: dict[str, Any], status: str) -> None:
        """Write the batch's output and error files and give it its last status."""
        bid, now = b["id"], int(time.time())
        if b["status"] != "finalizing":
            await self.db.run(self.store.set_batch, bid, status="finalizing", finalizing_at=now)
        files, fields = [], {"status": status, f"{status}_at": now}
        for kind, states in (("output", ("done",)), ("error", ("failed", "expired", "cancelled"))):
            fid = f"file-{secrets.token_hex(12)}"
            if (written := await self.db.run(self.store.write_results, bid, states, fid)) is None:
                continue
            files.append({"id": fid, "purpose": "batch_output", "filename": f"{bid}_{kind}.jsonl",
                          "bytes": written[1], "created_at": now, "path": written[0]})
            fields[f"{kind}_file_id"] = fid
        await self.db.run(self.store.finish, bid, fields, files)
        self.pending.pop(bid, None)
        log.info("batch %s %s", bid, status)
