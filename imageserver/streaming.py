"""Answers of the image routes: the OpenAI error of a failed job, and the server-sent events of a streamed one.

A stream (`stream: true`) is OpenAI's: `event: image_generation.partial_image` (or image_edit.*) with a JSON `data`
line per preview, then one `*.completed` event per image; every event carries an extra `index` (the image's place
among the request's n). Between them, after every denoising step, a comment line that SSE parsers (the openai SDK's
included) skip: `: progress {"step": k, "steps": N, "elapsed": seconds since the pipeline call started}`. A failure
after the stream started is `event: error` with `data: {"type": "error", "error": {message, type, param, code}}`, which
the openai SDK raises as an APIError. A client that goes away cancels its job (the pipeline stops at its next step
unless other requests of its batch still wait).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from imageserver.api import BadRequest
from imageserver.images import encode_image
from imageserver.jobs import ClientGone, Job, JobCancelled, Partial, Progress, RequestTimeout

log = logging.getLogger("imageserver")


def failure(err: BaseException, request_timeout: float) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI error object of a request whose job failed."""
    if isinstance(err, BadRequest):
        return 400, err.body()["error"]
    if isinstance(err, RequestTimeout):
        status, message, type_, code = (504, f"the request took longer than request_timeout ({request_timeout:g}s, "
                                        "queue included): ask for fewer steps, a smaller size or fewer images, or "
                                        "raise args.request_timeout", "server_error", "timeout")
    elif isinstance(err, ClientGone):
        status, message, type_, code = 499, "the client went away", "server_error", "client_closed"
    elif isinstance(err, JobCancelled):
        status, message, type_, code = 504, "the request was cancelled", "server_error", "cancelled"
    else:
        log.error("pipeline call failed", exc_info=err)
        status, message, type_, code = (500, f"the pipeline failed: {type(err).__name__}: {err}", "server_error",
                                        "pipeline_error")
    return status, {"message": message, "type": type_, "param": None, "code": code}


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def progress_comment(p: Progress) -> bytes:
    """The progress comment of a step (ignored by SSE parsers, read by the web app)."""
    return f": progress {json.dumps({'step': p.step, 'steps': p.steps, 'elapsed': round(p.elapsed, 3)})}\n\n".encode()


def error_event(err: BaseException, request_timeout: float) -> bytes:
    """The event that ends a stream whose job failed."""
    return sse("error", {"type": "error", "error": failure(err, request_timeout)[1]})


async def stream_job(job: Job, kind: str, size: tuple[int, int], meta: dict[str, Any],
                     usage: dict[str, Any], finish: Callable[[list[Any]], list[bytes]], compression: int | None,
                     timeout: float, is_disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[bytes]:
    """The events of a streaming job: `kind` is image_generation or image_edit, `size` the images' (width,
    height); `meta` holds the size, quality, background and output_format every event repeats (as OpenAI's schema
    has them), `usage` what each completed event carries; `finish` encodes the final images (in a thread)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    checked = loop.time()
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                yield error_event(RequestTimeout(), timeout)
                return
            if loop.time() - checked >= 0.5:
                checked = loop.time()
                if await is_disconnected():
                    log.info("client went away: its job is dropped")
                    return
            try:
                ev = await asyncio.wait_for(job.events.get(), timeout=min(0.5, remaining))
            except TimeoutError:
                continue
            if ev is None:
                break
            if isinstance(ev, Progress):
                yield progress_comment(ev)
            elif isinstance(ev, Partial):
                data = await asyncio.to_thread(_preview_bytes, ev.image, size, meta["output_format"], compression)
                yield sse(f"{kind}.partial_image", {
                    "type": f"{kind}.partial_image", "b64_json": base64.b64encode(data).decode(),
                    "partial_image_index": ev.partial_index, "created_at": int(time.time()), **meta,
                    "index": ev.index})
        try:
            images, _peak = job.future.result()
        except Exception as err:
            yield error_event(err, timeout)
            return
        for i, data in enumerate(await asyncio.to_thread(finish, images)):
            yield sse(f"{kind}.completed", {"type": f"{kind}.completed", "b64_json": base64.b64encode(data).decode(),
                                            "created_at": int(time.time()), **meta, "usage": usage, "index": i})
    finally:
        if not job.future.done():
            job.cancelled.set()


def _preview_bytes(image: Any, size: tuple[int, ...], fmt: str, compression: int | None) -> bytes:
    from PIL import Image

    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return encode_image(image, fmt, compression, fast=True)
