"""Per-model queues, limits and runs: which waiting request a model serves now, and what a request gets that waits
too long or finds the queue full.

A request asks `acquire(model)` for a Lease. It gets one at once when its model is ready, has a free place
(max_concurrency) and nobody queues before it; else it joins the model's queue (FIFO), or gets TooManyRequests
(429, Retry-After) when max_queue requests wait already. Every change that can let a request through (a lease
released, a model ready or stopped, a waiter gone, a start that stops waiting) calls `_pump`, which grants leases in
queue order and asks for a start of a model that has waiters and is stopped, failed or sleeping (a start wakes a
sleeping model: hub/manager/sleep.py).

The run rule (anti-thrash): a model is contended while another model's start waits for its memory (the start
marked it in `blocked_on`; see planner.py). `contended_since` is when the oldest of those waits began: the arrival of
the other model's oldest waiting request. A contended model serves a waiting request only if one holds:
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
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hub.config import Limits
from hub.engines.base import Upstream
from hub.errors import ClientLeft, ModelUnavailable, TooManyRequests, WaitTimeout
from hub.manager.states import Phase, State

if TYPE_CHECKING:
    from hub.manager.slot import Slot

SERVICE_EWMA = 0.2  # weight of the latest request in a model's mean service time (Retry-After estimates)


@dataclass(eq=False)
class Waiter:
    """A request in a model's queue: its arrival (time.monotonic) and the future its Lease is delivered on."""

    arrival: float
    future: asyncio.Future = field(repr=False)


@dataclass
class Lease:
    """A request's hold on a ready model; release it when the response (or stream) is done."""

    slot: Slot
    upstream: Upstream
    _on_release: Callable[[Lease], None] | None = field(default=None, repr=False)
    granted: float = field(default_factory=time.monotonic)
    _released: bool = False

    def release(self) -> None:
        """End the hold (idempotent)."""
        if self._released:
            return
        self._released = True
        s = self.slot
        s.in_flight -= 1
        s.last_used = time.time()
        took = time.monotonic() - self.granted
        s.service_s = took if s.service_s is None else (1 - SERVICE_EWMA) * s.service_s + SERVICE_EWMA * took
        if s.in_flight == 0:
            s.idle.set()
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


class Queues:
    """The queueing half of the Manager (hub/manager/core.py): acquire, the queues and the run rule."""

    slots: dict[str, Slot]
    _closing: bool

    def slot(self, model_id: str) -> Slot:  # pragma: no cover - the Manager's
        raise NotImplementedError

    def _begin_start(self, s: Slot) -> asyncio.Task:  # pragma: no cover - the Manager's
        raise NotImplementedError

    async def acquire(self, model_id: str, abandoned: Callable[[], Awaitable[object]] | None = None) -> Lease:
        """Wait until the model can serve one more request (starting it if needed, at most max_wait) and hold it.
        Raises TooManyRequests when its queue is full, WaitTimeout past max_wait, the start's error when its start
        fails, and ClientLeft once `abandoned()` returns: a coroutine function that returns when the client has
        gone (the gateway's reads ASGI `receive` until http.disconnect), called only if the request has to wait.
        Cancelling the caller takes the request off the queue too."""
        s = self.slot(model_id)
        now = time.monotonic()
        if not s.queue and self._may_serve(s, now, now):
            return self._grant(s)
        lim = s.limits
        if len(s.queue) >= lim.max_queue:
            s.rejected += 1
            places = lim.max_concurrency or max(1, s.in_flight)
            wait = retry_after(s.service_s, len(s.queue), places)
            limit = f"max_concurrency {lim.max_concurrency}" if lim.max_concurrency else "no max_concurrency"
            raise TooManyRequests(
                f"model {s.id!r} is at its limits: {s.in_flight} request(s) in flight ({limit}) and "
                f"{len(s.queue)} waiting (max_queue {lim.max_queue}); retry after {wait}s, or raise max_queue "
                "in models.toml", headers={"Retry-After": str(wait)})
        w = Waiter(now, asyncio.get_running_loop().create_future())
        s.queue.append(w)
        try:
            self._pump()
            return await self._await_turn(s, w, abandoned)
        finally:
            if w in s.queue:
                s.queue.remove(w)
                self._pump()

    async def _await_turn(self, s: Slot, w: Waiter, abandoned: Callable[[], Awaitable[object]] | None) -> Lease:
        """Wait for w's lease (or its start's error) until max_wait or until `abandoned()` returns."""
        left = w.arrival + s.limits.max_wait - time.monotonic()
        gone = asyncio.ensure_future(abandoned()) if abandoned else None
        try:
            done, _ = await asyncio.wait([w.future, *([gone] if gone else [])], timeout=max(0.0, left),
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._forfeit(s, w)
            s.abandoned += 1
            raise
        finally:
            if gone:
                gone.cancel()
        if w.future.done():
            return w.future.result()
        why = self._why_waiting(s, w)
        self._forfeit(s, w)
        if gone in done:
            s.abandoned += 1
            raise ClientLeft(f"the client left while its request waited for model {s.id!r}")
        s.timed_out += 1
        raise WaitTimeout(f"model {s.id!r} could not take this request within max_wait ({s.limits.max_wait:g}s): "
                          f"{why}; retry later, or raise max_wait in models.toml", headers={"Retry-After": "10"})

    def _forfeit(self, s: Slot, w: Waiter) -> None:
        """Take w off the queue; a lease granted in the same instant goes back."""
        if w in s.queue:
            s.queue.remove(w)
        if not w.future.done():
            w.future.cancel()
        elif not w.future.cancelled() and w.future.exception() is None:
            w.future.result().release()
        self._pump()

    def _why_waiting(self, s: Slot, w: Waiter) -> str:
        """What a waiting request of s waits for, in words."""
        ahead = s.queue.index(w) if w in s.queue else 0
        if s.state == State.STARTING:
            return "it is still waking" if s.waking else "it is still starting"
        if s.phase is Phase.FALLING_ASLEEP:
            return "it is falling asleep (it wakes once asleep)"
        if s.phase is Phase.WAITING:
            return f"it waits for memory held by {', '.join(map(repr, sorted(s.blocked_on)))}"
        if s.state == State.READY and (others := self._contenders(s)):
            return f"it yields to {', '.join(map(repr, others))}, whose requests wait for its memory"
        return f"{s.in_flight} request(s) in flight and {ahead} ahead of it in the queue"

    # ---- the pump ----

    def _grant(self, s: Slot) -> Lease:
        """A lease on a model that may serve one more request now."""
        s.in_flight += 1
        s.admitted += 1
        s.idle.clear()
        s.last_admit = time.monotonic()
        upstream = s.engine.upstream(s.cfg) if not s.managed else Upstream(s.handle.base_url)  # type: ignore[union-attr]
        return Lease(s, upstream, self._released)

    def _released(self, lease: Lease) -> None:
        self._pump()

    def _contenders(self, s: Slot) -> list[str]:
        """The models whose starts wait for s's memory."""
        return [o.id for o in self.slots.values() if s.id in o.blocked_on]

    def _contended_since(self, s: Slot) -> float | None:
        """When the oldest wait for s's memory began (time.monotonic), or None."""
        times = [o.waiting_since() for o in self.slots.values() if s.id in o.blocked_on]
        return min((t for t in times if t is not None), default=None)

    def _may_serve(self, s: Slot, arrival: float, now: float) -> bool:
        """Whether s serves a request that arrived at `arrival` now: ready, a free place, the run rule."""
        if s.state != State.READY or (s.managed and s.handle is None) or s.phase is Phase.FALLING_ASLEEP:
            return False
        if s.limits.max_concurrency and s.in_flight >= s.limits.max_concurrency:
            return False
        return admits(arrival, now, self._contended_since(s), s.ready_since, s.limits)

    def _pump(self) -> None:
        """Grant leases to waiting requests in queue order, and start models that have waiters but no engine."""
        if self._closing:
            return
        now = time.monotonic()
        for s in self.slots.values():
            while s.queue and s.queue[0].future.done():  # forfeited in this instant
                s.queue.popleft()
            if not s.queue:
                continue
            if s.state == State.READY:
                while s.queue and self._may_serve(s, s.queue[0].arrival, now):
                    w = s.queue.popleft()
                    if not w.future.done():
                        w.future.set_result(self._grant(s))
            elif s.managed and s.start_task is None and s.state in (State.STOPPED, State.FAILED, State.SLEEPING):
                self._begin_start(s)

    def _fail_waiters(self, s: Slot, err: BaseException) -> None:
        """Every request waiting for s gets `err` (its start failed, or the hub is shutting down)."""
        while s.queue:
            w = s.queue.popleft()
            if not w.future.done():
                w.future.set_exception(err)
                w.future.exception()  # retrieved: a waiter that left in this instant never reads it

    def _fail_all_waiters(self, why: str) -> None:
        for s in self.slots.values():
            self._fail_waiters(s, ModelUnavailable(f"model {s.id!r} cannot serve: {why}"))
