"""A request's work and its life on the worker thread: what it asks of the pipeline (Work), the job that carries it
(Job: its future, its stream of Progress and Partial events, its cancellation flag) and the ways it ends early.
Shared by the worker (which queues and batches jobs) and the pipelines (which run them), so neither imports the
other."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any


class LoadError(RuntimeError):
    """The pipeline cannot load, for a reason its message says whole (what is missing and what to do): logged as that
    one line, without a traceback."""


class JobCancelled(Exception):
    """Raised inside a pipeline call whose requests all timed out or whose clients all went away."""


class RequestTimeout(Exception):
    """The request waited and ran longer than request_timeout."""


class ClientGone(Exception):
    """The client disconnected before its images were ready."""


@dataclass(eq=False)
class Work:
    """What one request asks of the pipeline. Image i of the request is made from seed + i, alone or in a batch."""

    task: str  # text2image, image2image, inpaint, edit
    param: str  # the request parameter blamed when the model cannot do the task
    shared: dict[str, Any]  # call arguments a batch shares: size, steps, guidance, strength, the pipeline's own
    prompt: str
    negative_prompt: str | None
    n: int
    seed: int
    image: Any = None  # the input image (a list for a multi-image edit)
    mask: Any = None
    partial_images: int = 0  # previews per image, for a streaming request
    lora: tuple[str, float] | None = None  # (adapter, scale) applied for this work; None: the base alone

    def key(self) -> tuple | None:
        """Works with equal keys can share one pipeline call (one adapter at one scale per call); None: this one runs
        alone (instruction edits)."""
        if self.task == "edit":
            return None
        shape = tuple(sorted((k, v) for k, v in self.shared.items() if v is not None))
        return self.task, shape, self.negative_prompt is None, self.lora


@dataclass(frozen=True)
class Progress:
    """A denoising step of a job finished."""

    step: int
    steps: int
    elapsed: float  # seconds since the job's pipeline call started


@dataclass(frozen=True)
class Partial:
    """A preview of image `index` of a job, the `partial_index`-th one."""

    index: int
    partial_index: int
    image: Any  # a PIL image (latent resolution, or full size from a preview VAE)


@dataclass(eq=False)
class Job:
    """One request's work waiting for, or running on, the worker thread."""

    work: Work
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    events: asyncio.Queue | None = None  # streaming: Progress and Partial, then None once the future is settled
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0  # time.monotonic() when its pipeline call started

    def emit(self, event: Progress | Partial) -> None:
        """Hand an event to the request's stream (called on the worker thread)."""
        if self.events is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
                self.loop.call_soon_threadsafe(self.events.put_nowait, event)
