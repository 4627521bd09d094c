"""The queue in front of the pipeline: one worker thread loads it and then runs jobs in arrival order, several queued
jobs of one shape together as one batch (up to max_batch images); a request waits for its job within a deadline while
watching for its client going away. A streaming job also receives progress and partial images as they happen.
Sleep and wake (dropping the pipeline and loading it again) run on the same thread, in the same queue, between
batches: no batch ever gathers jobs across them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from imageserver.jobs import ClientGone, Job, JobCancelled, LoadError, RequestTimeout, Work
from imageserver.memory import Memory

log = logging.getLogger("imageserver")


@dataclass(eq=False)
class Control:
    """Work on the pipeline itself (sleep, wake), run on the worker thread between batches."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class Runner(Protocol):
    """What the worker runs jobs with (imageserver.pipelines.Pipelines): declared here, so the worker knows only the
    calls it makes and the pipelines need not import the worker."""

    device: str  # the torch device the loaded pipeline runs on (Memory measures there)

    def load(self) -> None:
        """Load the pipeline (on the worker thread: first load and wake)."""

    def unload(self) -> None:
        """Drop the pipeline (sleep)."""

    def run(self, jobs: list[Job]) -> list[list[Any]]:
        """Each job's images, for jobs of one shape; JobCancelled once all of them are cancelled."""


class Worker:
    """The one thread that loads the pipeline and then runs jobs in arrival order, batching queued jobs of one shape."""

    def __init__(self, pipes: Runner, memory: Memory, on_load_failure: Callable[[str], None],
                 max_batch: int = 1, batch_wait: float = 0.0) -> None:
        self.pipes = pipes
        self.memory = memory
        self.on_load_failure = on_load_failure
        self.max_batch = max_batch
        self.batch_wait = batch_wait
        self._last_batch = 1  # requests in the last batch: several means clients send concurrently
        self.ready = threading.Event()
        self.pending: deque[Job | Control | None] = deque()
        self.asleep = False  # the pipeline was dropped by sleep(); wake() loads it again
        self._control_lock = asyncio.Lock()
        self.cond = threading.Condition()
        self.stats = {"batches": 0, "requests": 0, "images": 0, "largest_batch": 0}
        self.thread = threading.Thread(target=self._main, name="pipeline-worker", daemon=True)

    def start(self) -> None:
        """Start loading; ready is set once the pipeline serves."""
        self.thread.start()

    def stop(self) -> None:
        """Let the thread end after the batch it runs."""
        self._put(None)

    def _put(self, job: Job | Control | None) -> None:
        with self.cond:
            self.pending.append(job)
            self.cond.notify()

    def submit(self, work: Work, stream: bool = False) -> Job:
        """Queue `work`; its (images, peak MiB) arrive in job.future, and with `stream` its events in job.events."""
        loop = asyncio.get_running_loop()
        job = Job(work, loop, loop.create_future(), asyncio.Queue() if stream else None)
        self._put(job)
        return job

    async def call(self, work: Work, timeout: float, is_disconnected: Callable[[], Awaitable[bool]]) -> Any:
        """The work's (images, peak MiB) within `timeout` s, queue included; else RequestTimeout or ClientGone, and the
        job is dropped."""
        job = self.submit(work)
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
        self._put(c)
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

    def _next(self) -> list[Job] | Control | None:
        """The oldest queued job and the queued jobs of its shape that fit in max_batch images; a Control alone;
        None: stop."""
        with self.cond:
            while not self.pending:
                self.cond.wait()
            head = self.pending.popleft()
            if head is None or isinstance(head, Control):
                return head
            batch, key = [head], head.work.key()
            if key is None or self.max_batch == 1:
                return batch
            images = self._gather(batch, key, head.work.n)
            # after a batch of several, the clients it answered are likely sending their next requests right now
            deadline = time.monotonic() + (self.batch_wait if self._last_batch > 1 else 0.0)
            while images < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self.cond.wait(left)
                if None in self.pending:
                    break
                images = self._gather(batch, key, images)
            self._last_batch = len(batch)
            return batch

    def _gather(self, batch: list[Job], key: tuple, images: int) -> int:
        """Move the queued jobs of `key` that fit into `batch` (under the lock); the batch's images then."""
        for job in list(self.pending):
            if job is None or isinstance(job, Control) or images >= self.max_batch:
                break
            if not job.cancelled.is_set() and job.work.key() == key and images + job.work.n <= self.max_batch:
                self.pending.remove(job)
                batch.append(job)
                images += job.work.n
        return images

    def _main(self) -> None:
        try:
            t0 = time.monotonic()
            self.pipes.load()
            self.memory.use(self.pipes.device)
            log.info("pipeline ready in %.1fs", time.monotonic() - t0)
        except LoadError as err:  # explained in full: one line
            log.error("loading the pipeline failed: %s", err)
            self.on_load_failure(str(err))
            return
        except BaseException as err:  # any failure to load ends the server with the reason in its log
            log.exception("loading the pipeline failed")
            self.on_load_failure(f"{type(err).__name__}: {err}")
            return
        self.ready.set()
        while (batch := self._next()) is not None:
            if isinstance(batch, Control):
                self._run_control(batch)
                continue
            live = []
            for job in batch:
                if job.cancelled.is_set():
                    self._settle(job, None, JobCancelled())
                else:
                    live.append(job)
            if not live:
                continue
            now = time.monotonic()
            for job in live:
                job.started = now
            if len(live) > 1:
                log.info("batch of %d requests (%d images)", len(live), sum(j.work.n for j in live))
            try:
                results, peak = self.memory.measure(lambda live=live: self.pipes.run(live), len(live))
            except BaseException as err:
                for job in live:
                    self._settle(job, None, err)
                continue
            s = self.stats
            s["batches"] += 1
            s["requests"] += len(live)
            s["images"] += sum(len(r) for r in results)
            s["largest_batch"] = max(s["largest_batch"], sum(j.work.n for j in live))
            for job, images in zip(live, results, strict=True):
                self._settle(job, (images, peak), None)

    @staticmethod
    def _run_control(c: Control) -> None:
        try:
            result, err = c.fn(), None
        except BaseException as e:
            result, err = None, e

        def settle() -> None:
            if not c.future.done():
                if err is not None:
                    c.future.set_exception(err)
                else:
                    c.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            c.loop.call_soon_threadsafe(settle)

    @staticmethod
    def _settle(job: Job, result: Any, err: BaseException | None) -> None:
        def settle() -> None:
            if not job.future.done():
                if err is not None:
                    job.future.set_exception(err)
                    if job.cancelled.is_set():  # nobody waits for it any more: no "never retrieved" noise
                        job.future.exception()
                else:
                    job.future.set_result(result)
            if job.events is not None:
                job.events.put_nowait(None)

        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            job.loop.call_soon_threadsafe(settle)
