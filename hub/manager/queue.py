"""Per-model queues, limits and runs: which waiting request a model serves now, and what a request gets that waits
too long or finds the queue full.

A request asks `acquire(model)` for a Lease (Manager.acquire: the model's ModelQueue, one per Slot). It gets one at
once when its model is ready, has a free place (max_concurrency) and nobody queues before it; else it joins the
model's queue (FIFO), or gets TooManyRequests (429, Retry-After) when max_queue requests wait already. Every change
that can let a request through (a lease released, a model ready or stopped, a waiter gone, a start that stops
waiting) calls the pump (dispatch.py), which grants leases in queue order and asks for a start of a model that has
waiters and is stopped, failed or sleeping (a start wakes a sleeping model: hub/manager/sleep.py).

The run rule (anti-thrash, `admits`; dispatch.py applies it across models): a model is contended while another
model's start waits for its memory (that start is in phase waiting with the model in its `blocked_on`; see
planner.py). `contended_since` is when the oldest of those waits began: the arrival of the other model's oldest
waiting request. A contended model serves a waiting request only if one holds:
- the request came first (arrived before contended_since): arrival order across models;
- the model's run is not over: now < contended_since + max_run;
- the model is new: now < ready_since + min_residency (each start pays off before the model yields).
Otherwise the request waits for its model's next turn. Once the model has nothing in flight it is idle and the
waiting start evicts it; its waiters start it again, and it gets the memory back when the other model's turn ends
the same way. max_run = min_residency = 0 serves strictly in arrival order (a swap whenever the next request is for
the other model); the defaults serve in runs.

Bounds: a request waits at most max_wait from its arrival, its model's start included; past it, WaitTimeout (503,
Retry-After). Before that, between two models: the other model's start (start_timeout), its run
(max(max_run, min_residency) from the wait's start), the drain of its requests in flight (drain_timeout counted
from its last admitted request, else MemoryBusy), and this model's own start. A request whose awaiting task is
cancelled, or whose `abandoned` awaitable returns (the client left), leaves the queue at once (ClientLeft).

Background work (batch lines: hub/batches/) waits in a queue of its own, after every request: a background request
is served only while no request waits for the model, nor another model's start for its memory (it yields at once,
where requests keep their run), never takes the last place under a max_concurrency above 1 (an interactive request
finds one free), and has no max_wait (its batch's expiry cancels it). While nobody else
waits, background requests fill the model up to that limit, so the engine batches them. Under max_concurrency 1 a
background request may take the only place when nobody waits (else it would never run): a request that comes then
waits for that one to end. Background requests are not counted as queued (`len()`, metrics).

A ModelQueue knows only its own model (`Queued`); what needs every model (may it serve now, what does a request
wait for, the pump) it asks through `Dispatch`. So this module imports nothing of the manager's.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from hub.config import Limits, ModelConfig
from hub.engines.base import Engine, Upstream
from hub.errors import ClientLeft, TooManyRequests, WaitTimeout

SERVICE_EWMA = 0.2  # weight of the latest request in a model's mean service time (Retry-After estimates)


class Queued(Protocol):
    """What a model's queue and the holder of a lease read of the model (hub.manager.Slot is one)."""

    id: str
    limits: Limits
    reason: str | None
    engine: Engine
    cfg: ModelConfig  # the gateway reads these two of a lease's model: its registry table
    starts: int  # and how many times it was started (an engine start's identity, with its address)

    def upstream(self) -> Upstream:
        """Where a lease on it sends the request."""
        ...


class Dispatch(Protocol):
    """What a model's queue asks of the one who sees every model (dispatch.Dispatcher is it)."""

    def may_serve(self, model: str, arrival: float, now: float, background: bool = False) -> bool:
        """Whether the model serves a request that arrived at `arrival` now: ready, a free place, the run rule;
        `background` work never while another model's start waits for its memory."""
        ...

    def why_waiting(self, model: str, ahead: int) -> str:
        """What a request waiting for the model (`ahead` requests before it) waits for, in words."""
        ...

    def pump(self) -> None:
        """Grant what may be granted and start what must start, after a change that may let a request through."""
        ...


@dataclass(eq=False)
class Waiter:
    """A request in a model's queue: its arrival (time.monotonic) and the future its Lease is delivered on."""

    arrival: float
    future: asyncio.Future = field(repr=False)


@dataclass
class Lease:
    """A request's hold on a ready model; release it when the response (or stream) is done."""

    slot: Queued
    upstream: Upstream
    _on_release: Callable[[Lease], None] | None = field(default=None, repr=False)
    granted: float = field(default_factory=time.monotonic)
    background: bool = False  # background work's (a batch line)
    _released: bool = False

    def release(self) -> None:
        """End the hold (idempotent)."""
        if self._released:
            return
        self._released = True
        if self._on_release:
            self._on_release(self)


def admits(arrival: float, now: float, contended_since: float | None, ready_since: float | None,
           limits: Limits) -> bool:
    """The run rule: whether a ready model with a free place serves a request that arrived at `arrival` (all times
    time.monotonic; contended_since None: no other model waits for its memory)."""
    if contended_since is None or arrival <= contended_since:
        return True
    if ready_since is not None and now < ready_since + limits.min_residency:
        return True
    return now < contended_since + limits.max_run


def retry_after(service_s: float | None, queued: int, places: int) -> int:
    """Seconds a refused client should wait: the queue ahead of it served `places` at a time (1 to 60)."""
    return max(1, min(60, math.ceil((service_s or 1.0) * (queued + 1) / max(1, places))))


@dataclass(eq=False)
class ModelQueue:
    """One model's queue: its waiting requests (oldest first), its leases in flight, and their counters (for
    metrics: leases granted; requests refused with 429, timed out in the queue, gone from it). `len()` is the
    number of requests waiting."""

    model: Queued = field(repr=False)
    waiting: deque[Waiter] = field(default_factory=deque)
    background: deque[Waiter] = field(default_factory=deque)  # batch lines, served after every waiting request
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while nothing is in flight
    last_used: float = 0.0  # time.time() of the last request's end (or of its model becoming ready: core.py)
    last_request: float = 0.0  # time.time() of the last end of a request that was not background work
    last_admit: float = 0.0  # time.monotonic() of the last lease granted
    service_s: float | None = None  # mean seconds a request holds it (Retry-After estimates)
    admitted: int = 0
    rejected: int = 0
    timed_out: int = 0
    abandoned: int = 0
    loads: int = 0  # admin loads waiting for its model's start (they keep a start going that no request waits for)

    def __post_init__(self) -> None:
        self.idle.set()

    def __len__(self) -> int:
        return len(self.waiting)

    @property
    def awaited(self) -> bool:
        """Whether a request, background work or a load waits for the model."""
        return bool(self.waiting) or bool(self.background) or self.loads > 0

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """An admin load waits for the model while in this block."""
        self.loads += 1
        try:
            yield
        finally:
            self.loads -= 1

    async def acquire(self, dispatch: Dispatch, abandoned: Callable[[], Awaitable[object]] | None = None,
                      background: bool = False) -> Lease:
        """Wait until the model can serve one more request (its start included, at most max_wait) and hold it.
        Raises TooManyRequests when the queue is full, WaitTimeout past max_wait, the start's error when its start
        fails, and ClientLeft once `abandoned()` returns: a coroutine function that returns when the client has
        gone (the gateway's reads ASGI `receive` until http.disconnect), called only if the request has to wait.
        Cancelling the caller takes the request off the queue too. `background`: the request is background work
        (the module's docstring): it waits without max_wait, until its caller is cancelled or the start fails."""
        m = self.model
        now = time.monotonic()
        if background:
            return await self._acquire_background(dispatch, now)
        if not self.waiting and dispatch.may_serve(m.id, now, now):
            return self.grant(dispatch)
        lim = m.limits
        if len(self.waiting) >= lim.max_queue:
            self.rejected += 1
            places = lim.max_concurrency or max(1, self.in_flight)
            wait = retry_after(self.service_s, len(self.waiting), places)
            limit = f"max_concurrency {lim.max_concurrency}" if lim.max_concurrency else "no max_concurrency"
            raise TooManyRequests(
                f"model {m.id!r} is at its limits: {self.in_flight} request(s) in flight ({limit}) and "
                f"{len(self.waiting)} waiting (max_queue {lim.max_queue}); retry after {wait}s, or raise max_queue "
                "in models.toml", headers={"Retry-After": str(wait)})
        w = Waiter(now, asyncio.get_running_loop().create_future())
        self.waiting.append(w)
        try:
            dispatch.pump()
            return await self._await_turn(dispatch, w, abandoned)
        finally:
            if w in self.waiting:
                self.waiting.remove(w)
                dispatch.pump()

    async def _acquire_background(self, dispatch: Dispatch, now: float) -> Lease:
        """Background work's acquire: at once when it may take a place now, else in the background queue."""
        if self.background_may_serve(dispatch, now) and not self.background:
            return self.grant(dispatch, background=True)
        w = Waiter(now, asyncio.get_running_loop().create_future())
        self.background.append(w)
        try:
            dispatch.pump()
            return await asyncio.shield(w.future)
        except asyncio.CancelledError:
            self._forfeit(dispatch, w)
            raise
        finally:
            if w in self.background:
                self.background.remove(w)
                dispatch.pump()

    def background_may_serve(self, dispatch: Dispatch, now: float) -> bool:
        """Whether background work may take a place now: no request waits, a place stays free for one under a
        max_concurrency above 1, and the model serves (ready, and no other model's start waits for its memory)."""
        limit = self.model.limits.max_concurrency
        if self.waiting or (limit > 1 and self.in_flight >= limit - 1):
            return False
        return dispatch.may_serve(self.model.id, now, now, background=True)

    async def _await_turn(self, dispatch: Dispatch, w: Waiter,
                          abandoned: Callable[[], Awaitable[object]] | None) -> Lease:
        """Wait for w's lease (or its start's error) until max_wait or until `abandoned()` returns."""
        m = self.model
        left = w.arrival + m.limits.max_wait - time.monotonic()
        gone = asyncio.ensure_future(abandoned()) if abandoned else None
        try:
            done, _ = await asyncio.wait([w.future, *([gone] if gone else [])], timeout=max(0.0, left),
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._forfeit(dispatch, w)
            self.abandoned += 1
            raise
        finally:
            if gone:
                gone.cancel()
        if w.future.done():
            return w.future.result()
        why = dispatch.why_waiting(m.id, self.waiting.index(w) if w in self.waiting else 0)
        self._forfeit(dispatch, w)
        if gone in done:
            self.abandoned += 1
            raise ClientLeft(f"the client left while its request waited for model {m.id!r}")
        self.timed_out += 1
        raise WaitTimeout(f"model {m.id!r} could not take this request within max_wait ({m.limits.max_wait:g}s): "
                          f"{why}; retry later, or raise max_wait in models.toml", headers={"Retry-After": "10"})

    def _forfeit(self, dispatch: Dispatch, w: Waiter) -> None:
        """Take w off its queue; a lease granted in the same instant goes back."""
        if w in self.waiting:
            self.waiting.remove(w)
        if w in self.background:
            self.background.remove(w)
        if not w.future.done():
            w.future.cancel()
        elif not w.future.cancelled() and w.future.exception() is None:
            w.future.result().release()
        dispatch.pump()

    def grant(self, dispatch: Dispatch, background: bool = False) -> Lease:
        """A lease on the model, which may serve one more request now; its release lets `dispatch` pump."""
        self.in_flight += 1
        self.admitted += 1
        self.idle.clear()
        self.last_admit = time.monotonic()
        return Lease(self.model, self.model.upstream(), lambda lease: self._release(lease, dispatch),
                     background=background)

    def _release(self, lease: Lease, dispatch: Dispatch) -> None:
        self.in_flight -= 1
        self.last_used = time.time()
        if not lease.background:
            self.last_request = self.last_used
        took = time.monotonic() - lease.granted
        self.service_s = took if self.service_s is None else (1 - SERVICE_EWMA) * self.service_s + SERVICE_EWMA * took
        if self.in_flight == 0:
            self.idle.set()
        dispatch.pump()

    def drop_forfeited(self) -> None:
        """Drop the requests at the front that were forfeited in this instant (their futures are done)."""
        while self.waiting and self.waiting[0].future.done():
            self.waiting.popleft()
        while self.background and self.background[0].future.done():
            self.background.popleft()

    def serve(self, dispatch: Dispatch, now: float) -> None:
        """Grant leases to the waiting requests in queue order while the model may serve them (the pump's part for
        one model), then background work while it may take a place."""
        while self.waiting and dispatch.may_serve(self.model.id, self.waiting[0].arrival, now):
            w = self.waiting.popleft()
            if not w.future.done():
                w.future.set_result(self.grant(dispatch))
        while self.background and self.background_may_serve(dispatch, now):
            w = self.background.popleft()
            if not w.future.done():
                w.future.set_result(self.grant(dispatch, background=True))

    def fail(self, err: BaseException) -> None:
        """Every waiting request and background work gets `err` (its model's start failed, or the hub is shutting
        down)."""
        for queue in (self.waiting, self.background):
            while queue:
                w = queue.popleft()
                if not w.future.done():
                    w.future.set_exception(err)
                    w.future.exception()  # retrieved: a waiter that left in this instant never reads it
