"""The queue in front of the pipeline: one worker thread loads it and then runs jobs one at a time, in arrival
order; a request waits for its job within a deadline while watching for its client going away. Sleep and wake
(dropping the pipeline and loading it again) run on the same thread, in the same queue, between jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pipelines imports this module: the worker only calls what it is handed
    from imageserver.pipelines import Memory, Pipelines

log = logging.getLogger("imageserver")


class JobCancelled(Exception):
    """Raised inside a pipeline call whose request timed out or whose client went away."""


class RequestTimeout(Exception):
    """The request waited and ran longer than request_timeout."""


class ClientGone(Exception):
    """The client disconnected before its images were ready."""


@dataclass(eq=False)
class Job:
    """One pipeline call waiting for, or running on, the worker thread."""

    fn: Callable[[Job], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class Control:
    """Work on the pipeline itself (sleep, wake), run on the worker thread between jobs."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class Worker:
    """The one thread that loads the pipeline and then runs jobs one at a time, in arrival order."""

    def __init__(self, pipes: Pipelines, memory: Memory, on_load_failure: Callable[[str], None]) -> None:
        self.pipes = pipes
        self.memory = memory
        self.on_load_failure = on_load_failure
        self.ready = threading.Event()
        self.asleep = False  # the pipeline was dropped by sleep(); wake() loads it again
        self._control_lock = asyncio.Lock()
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._main, name="pipeline-worker", daemon=True)

    def start(self) -> None:
        """Start loading; ready is set once the pipeline serves."""
        self.thread.start()

    def stop(self) -> None:
        """Let the thread end after the job it runs."""
        self.queue.put(None)

    def submit(self, fn: Callable[[Job], Any]) -> Job:
        """Queue fn(job) to run on the worker thread; its result arrives in job.future."""
        loop = asyncio.get_running_loop()
        job = Job(fn, loop, loop.create_future())
        self.queue.put(job)
        return job

    async def call(self, fn: Callable[[Job], Any], timeout: float, is_disconnected: Callable[[], Awaitable[bool]]
                   ) -> Any:
        """fn's result within `timeout` s, queue included; else RequestTimeout or ClientGone, and the job is dropped."""
        job = self.submit(fn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise RequestTimeout()
                done, _ = await asyncio.wait({job.future}, timeout=min(0.5, remaining))
                if done:
                    return job.future.result()
                if await is_disconnected():
                    log.info("client went away: its job is dropped")
                    raise ClientGone()
        finally:
            if not job.future.done():
                job.cancelled.set()

    async def _control(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        c = Control(fn, loop, loop.create_future())
        self.queue.put(c)  # type: ignore[arg-type]
        return await c.future

    async def sleep(self) -> None:
        """Drop the pipeline once the jobs queued before have run; new requests are refused until wake()."""
        async with self._control_lock:
            if self.asleep or not self.ready.is_set():
                return
            self.ready.clear()
            await self._control(self.pipes.unload)
            self.asleep = True
            log.info("asleep: pipeline dropped")

    async def wake(self) -> None:
        """Load the pipeline again (on the worker thread, like the first load); returns once it serves."""
        async with self._control_lock:
            if not self.asleep:
                return
            t0 = time.monotonic()

            def load() -> None:
                self.pipes.load()
                self.memory.use(self.pipes.device)

            await self._control(load)
            self.asleep = False
            self.ready.set()
            log.info("awake: pipeline loaded in %.1fs", time.monotonic() - t0)

    def _main(self) -> None:
        try:
            t0 = time.monotonic()
            self.pipes.load()
            self.memory.use(self.pipes.device)
            log.info("pipeline ready in %.1fs", time.monotonic() - t0)
        except BaseException as err:  # any failure to load ends the server with the reason in its log
            log.exception("loading the pipeline failed")
            self.on_load_failure(f"{type(err).__name__}: {err}")
            return
        self.ready.set()
        while (job := self.queue.get()) is not None:
            if isinstance(job, Control):
                try:
                    self._settle(job, job.fn(), None)  # type: ignore[arg-type]
                except BaseException as err:
                    self._settle(job, None, err)  # type: ignore[arg-type]
                continue
            if job.cancelled.is_set():
                self._settle(job, None, JobCancelled())
                continue
            try:
                result = self.memory.measure(lambda job=job: job.fn(job))
            except BaseException as err:
                self._settle(job, None, err)
            else:
                self._settle(job, result, None)

    @staticmethod
    def _settle(job: Job, result: Any, err: BaseException | None) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if err is not None:
                job.future.set_exception(err)
            else:
                job.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            job.loop.call_soon_threadsafe(settle)

