"""The Batch API's operations (files and batches), over the store (in its worker thread) and the runner; the routes
(hub/batches/api.py) turn HTTP into these calls and the results into OpenAI's shapes."""

from __future__ import annotations

import json
import secrets
import time
from functools import partial
from typing import Any

from starlette.types import ASGIApp

from hub.batches.runner import Db, Runner, local_post
from hub.batches.shapes import BATCH_ENDPOINTS, BatchCreate, BatchObject, FileObject, parse_input
from hub.batches.store import Store
from hub.config import Registry, parse_duration
from hub.endpoints import BY_PATH, endpoints_of, tasks_of
from hub.errors import Conflict, NotFound, RequestError
from hub.manager import Manager

MB = 1024 * 1024
CANCELLABLE = ("validating", "in_progress")


class Batches:
    """Files and batches of one hub: `start` opens the database and starts the runner, `stop` stops both."""

    def __init__(self, registry: Registry, manager: Manager, gateway: ASGIApp, observe: Any = None) -> None:
        self.registry, self.manager = registry, manager
        self.db = Db()
        host = registry.url.split("://", 1)[1]  # where an answer's links (image URLs) point: the hub itself
        self.runner = Runner(self.db, partial(local_post, gateway, host), self.cap, observe, base=self.base)

    async def start(self) -> None:
        """Open (and migrate) `<state_dir>/hub.db`, then run the batches left active."""
        await self.db.open(lambda: Store(self.registry.state_dir))
        await self.runner.start()

    async def stop(self) -> None:
        """Stop the runner (lines under way are sent again by the next hub) and close the database."""
        await self.runner.stop()
        await self.db.close()

    @property
    def store(self) -> Store:
        assert self.db.store is not None, "the batch store is open while the hub serves"
        return self.db.store

    def base(self, model: str) -> str:
        """The registered model a line's model id runs on: itself, or the model of a LoRA adapter `<id>:<name>`
        (its lines share the model's places)."""
        return self.manager.registry.split_adapter(model)[0]

    def cap(self, model: str) -> int:
        """How many lines of batches go to a model at once: the places background work may take under its
        max_concurrency (all but one, hub/manager/queue.py), else [hub] batch_concurrency. More would only wait in
        the model's queue, where a cancel no longer stops them."""
        s = self.manager.slots.get(self.base(model))
        places = s.limits.max_concurrency if s else 0
        return max(1, places - 1) if places else self.registry.hub.batch_concurrency

    # ---- files ----

    async def add_file(self, filename: str, purpose: str, content: bytes) -> FileObject:
        """Keep an uploaded file (purpose "batch")."""
        if purpose != "batch":
            raise RequestError(f"purpose {purpose!r}: the hub keeps files for batches only (purpose \"batch\")",
                               param="purpose")
        self.check_size(len(content))
        fid = f"file-{secrets.token_hex(12)}"
        row = await self.db.run(self.store.add_file, fid, purpose, filename or "upload.jsonl", content,
                                int(time.time()))
        return FileObject(**{k: v for k, v in row.items() if k != "path"})

    def check_size(self, size: int) -> None:
        """RequestError when an upload is over max_batch_file_mb."""
        limit = self.registry.hub.max_batch_file_mb
        if size > limit * MB:
            raise RequestError(f"the file is {size / MB:.1f} MB, more than the hub takes ({limit:g} MB: "
                               "max_batch_file_mb in [hub] of the registry); split it", param="file")

    async def file(self, file_id: str) -> FileObject:
        """A file's object, or NotFound."""
        row = await self.db.run(self.store.file, file_id)
        if row is None:
            raise NotFound(f"no file {file_id!r} (see GET /v1/files)", param="file_id")
        return FileObject(**{k: v for k, v in row.items() if k != "path"})

    async def files(self, purpose: str | None, after: str | None, limit: int, order: str) -> list[FileObject]:
        """Files, as GET /v1/files lists them."""
        rows = await self.db.run(self.store.files, purpose, after, limit, order)
        return [FileObject(**{k: v for k, v in r.items() if k != "path"}) for r in rows]

    async def content(self, file_id: str) -> bytes:
        """A file's content, or NotFound."""
        data = await self.db.run(self.store.content, file_id)
        if data is None:
            raise NotFound(f"no file {file_id!r} (see GET /v1/files)", param="file_id")
        return data

    async def delete_file(self, file_id: str) -> dict[str, Any]:
        """Delete a file (a batch made from it keeps its lines)."""
        if not await self.db.run(self.store.delete_file, file_id):
            raise NotFound(f"no file {file_id!r} (see GET /v1/files)", param="file_id")
        return {"id": file_id, "object": "file", "deleted": True}

    # ---- batches ----

    def refusal(self, model: str, url: str) -> str | None:
        """Why a registered model (or a LoRA adapter of one, `<id>:<name>`) cannot serve `url` (None: it can)."""
        s = self.manager.slots.get(self.base(model))
        if s is None:
            have = ", ".join(self.manager.slots) or "none"
            return self.manager.registry.no_adapter(model) or (
                f"body.model {model!r} is not a registered model (available: {have})")
        if BY_PATH[url].task not in tasks_of(s.cfg.type, s.cfg.tasks):
            serves = " or ".join(endpoints_of(s.cfg.type, s.cfg.tasks)) or "nothing"
            article = "an" if s.cfg.type[0] in "aeiou" else "a"
            return f"model {model!r} is {article} {s.cfg.type} model: it serves {serves}, not {url}"
        return None

    async def create(self, req: BatchCreate) -> BatchObject:
        """Check the input file's lines and keep the batch with them; the runner starts on it at once."""
        if req.endpoint not in BATCH_ENDPOINTS:
            raise RequestError(f"endpoint {req.endpoint!r} cannot be batched (valid: {', '.join(BATCH_ENDPOINTS)})",
                               param="endpoint")
        try:
            window = parse_duration(req.completion_window)
        except ValueError:
            window = 0.0
        if window <= 0:
            raise RequestError(f"completion_window {req.completion_window!r} is not a duration: use \"24h\" (the "
                               "hub takes any duration, such as \"2h\"; OpenAI takes only \"24h\")",
                               param="completion_window")
        f = await self.db.run(self.store.file, req.input_file_id)
        if f is None:
            raise NotFound(f"no file {req.input_file_id!r}: upload the input with purpose \"batch\" first",
                           param="input_file_id")
        if f["purpose"] != "batch":
            raise RequestError(f"file {req.input_file_id!r} has purpose {f['purpose']!r}: a batch's input is a file "
                               "uploaded with purpose \"batch\"", param="input_file_id")
        content = await self.db.run(self.store.content, req.input_file_id) or b""
        lines = parse_input(content, req.endpoint, self.registry.hub.max_batch_lines, self.refusal)
        now = int(time.time())
        bid = f"batch_{secrets.token_hex(12)}"
        row = {"id": bid, "status": "in_progress", "endpoint": req.endpoint, "input_file_id": req.input_file_id,
               "completion_window": req.completion_window, "created_at": now, "in_progress_at": now,
               "expires_at": now + max(1, round(window)), "metadata": req.metadata}
        rows = [(n, ln.custom_id, ln.method, ln.url, _json(ln.body), ln.body["model"]) for n, ln in enumerate(lines, 1)]
        await self.db.run(self.store.add_batch, row, rows)
        self.runner.wake()
        return await self.batch(bid)

    async def batch(self, batch_id: str) -> BatchObject:
        """A batch's object, or NotFound."""
        row = await self.db.run(self.store.batch, batch_id)
        if row is None:
            raise NotFound(f"no batch {batch_id!r} (see GET /v1/batches)", param="batch_id")
        return BatchObject.of(row)

    async def batches(self, after: str | None, limit: int) -> list[BatchObject]:
        """Batches, newest first."""
        return [BatchObject.of(r) for r in await self.db.run(self.store.batches, after, limit)]

    async def cancel(self, batch_id: str) -> BatchObject:
        """Stop sending the batch's lines; those under way finish (cancelling, then cancelled)."""
        b = await self.batch(batch_id)
        if b.status in ("cancelling", "cancelled"):
            return b
        if b.status not in CANCELLABLE:
            raise Conflict(f"batch {batch_id!r} is {b.status}: only a batch in progress can be cancelled",
                           param="batch_id")
        await self.db.run(self.store.set_batch, batch_id, status="cancelling", cancelling_at=int(time.time()))
        self.runner.wake()
        return await self.batch(batch_id)


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))
