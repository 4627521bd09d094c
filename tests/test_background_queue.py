"""Background work in a model's queue (hub/manager/queue.py: batch lines): after every waiting request, never the
last place under max_concurrency > 1, no max_wait; and through the manager, a start for it. In memory, exact
control over timing; assertions on counts and order."""

from __future__ import annotations

import asyncio
import time

import pytest

from hub.config import Limits
from hub.engines.base import Upstream
from hub.errors import ModelUnavailable
from hub.manager import ModelQueue, Phase, State
from tests.helpers import make, states, until, use


class Model:
    """A model (queue.Queued) and its Dispatch for a ModelQueue on its own: `places` places (0: no limit), served
    while `open`; the pump serves the queue as dispatch.Dispatcher does."""

    id, reason, engine = "m", None, None

    def __init__(self, places: int, max_wait: float = 60) -> None:
        self.limits = Limits(max_concurrency=places, max_queue=10, max_wait=max_wait, max_run=0, min_residency=0)
        self.queue, self.open = ModelQueue(self), True

    def upstream(self) -> Upstream:
        return Upstream("http://m")

    def may_serve(self, model: str, arrival: float, now: float, background: bool = False) -> bool:
        places = self.limits.max_concurrency
        return self.open and (not places or self.queue.in_flight < places)

    def why_waiting(self, model: str, ahead: int) -> str:
        return "closed"

    def pump(self) -> None:
        self.queue.drop_forfeited()
        self.queue.serve(self, time.monotonic())


async def test_background_work_leaves_the_last_place_to_requests_and_goes_after_them() -> None:
    m = Model(places=3)
    q = m.queue
    b1, b2 = await q.acquire(m, background=True), await q.acquire(m, background=True)
    b3 = asyncio.create_task(q.acquire(m, background=True))
    await until(lambda: len(q.background) == 1)
    assert q.in_flight == 2 and len(q) == 0, "two of three places: the last stays free"
    i1 = await q.acquire(m)  # a request takes the free place at once
    i2 = asyncio.create_task(q.acquire(m))
    await until(lambda: len(q) == 1)
    b1.release()
    await until(i2.done)
    assert not b3.done() and q.in_flight == 3, "the request waiting goes before the background work"
    i1.release()
    (await i2).release()
    await until(b3.done)
    assert q.in_flight == 2 and not q.background
    b2.release()
    (await b3).release()
    assert q.in_flight == 0 and q.idle.is_set()


async def test_background_work_waits_while_requests_are_queued() -> None:
    m = Model(places=2)
    q = m.queue
    m.open = False  # the model is starting: everything waits
    order: list[str] = []

    async def take(name: str, background: bool) -> None:
        lease = await q.acquire(m, background=background)
        order.append(name)
        await asyncio.sleep(0.01)
        lease.release()

    tasks = [asyncio.create_task(take("batch-1", True)), asyncio.create_task(take("batch-2", True))]
    await until(lambda: len(q.background) == 2)
    tasks += [asyncio.create_task(take(f"chat-{i}", False)) for i in range(3)]
    await until(lambda: len(q) == 3)
    m.open = True
    m.pump()
    await asyncio.gather(*tasks)
    assert order == ["chat-0", "chat-1", "chat-2", "batch-1", "batch-2"]


async def test_background_work_fills_a_model_without_a_limit_and_takes_a_single_place_when_nobody_waits() -> None:
    m = Model(places=0)
    leases = [await m.queue.acquire(m, background=True) for _ in range(5)]
    assert m.queue.in_flight == 5
    for lease in leases:
        lease.release()
    one = Model(places=1)
    b = await one.queue.acquire(one, background=True)  # nobody waits: it may take the only place
    i = asyncio.create_task(one.queue.acquire(one))
    await until(lambda: len(one.queue) == 1)
    b.release()
    (await i).release()


async def test_background_work_has_no_max_wait_leaves_when_cancelled_and_gets_a_failed_start() -> None:
    m = Model(places=2, max_wait=0.01)
    m.open = False
    q = m.queue
    waiting = asyncio.create_task(q.acquire(m, background=True))
    await asyncio.sleep(0.1)  # ten times max_wait: still waiting, no WaitTimeout
    assert not waiting.done() and len(q.background) == 1 and q.awaited
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not q.background and not q.awaited
    failing = asyncio.create_task(q.acquire(m, background=True))
    await until(lambda: len(q.background) == 1)
    q.fail(ModelUnavailable("its start failed"))
    with pytest.raises(ModelUnavailable, match="its start failed"):
        await failing


async def test_background_work_starts_a_stopped_model_through_the_manager() -> None:
    mgr, _ = make({"a": 1}, extra={"a": {"max_concurrency": 2}})
    lease = await asyncio.wait_for(mgr.acquire("a", background=True), 5)
    assert mgr.slots["a"].state == State.READY and mgr.slots["a"].in_flight == 1
    waiting = asyncio.create_task(mgr.acquire("a", background=True))
    await until(lambda: len(mgr.slots["a"].queue.background) == 1)
    chat = await asyncio.wait_for(mgr.acquire("a"), 1)  # the place background work leaves free
    chat.release()
    lease.release()
    (await asyncio.wait_for(waiting, 1)).release()
    await mgr.shutdown()


async def test_background_work_yields_at_once_to_another_models_start_that_waits_for_its_memory() -> None:
    mgr, _ = make({"a": 6, "b": 6}, budget=10, drain_timeout=30)
    batch = await asyncio.wait_for(mgr.acquire("a", background=True), 5)  # a runs a batch line
    chat = asyncio.create_task(mgr.acquire("b"))  # b's start waits for a's memory: a is contended
    await until(lambda: mgr.slots["b"].blocked_on == frozenset({"a"}))
    more = asyncio.create_task(mgr.acquire("a", background=True))
    await asyncio.sleep(0.05)
    assert not more.done() and mgr.slots["a"].in_flight == 1, "no new batch line on a contended model"
    batch.release()  # a is idle: evicted, b starts and serves the request
    (await asyncio.wait_for(chat, 5)).release()
    assert mgr.slots["b"].state == State.READY and not more.done()
    more.cancel()
    await mgr.shutdown()


async def test_with_a_batch_idle_window_batch_lines_wait_for_it_before_evicting_a_model_requests_use() -> None:
    mgr, _ = make({"chat": 6, "batch": 6}, budget=10, batch_idle_window=0.4)
    await use(mgr, "chat")  # requests use chat: it is protected for 0.4 s after each
    line = asyncio.create_task(mgr.acquire("batch", background=True))
    await until(lambda: mgr.slots["batch"].phase is Phase.WAITING)
    for _ in range(3):  # requests keep using chat: it is not contended, and the window starts again
        await asyncio.sleep(0.2)
        await asyncio.wait_for(use(mgr, "chat"), 1)
        assert not line.done() and states(mgr) == {"chat": "ready", "batch": "stopped"}
        assert mgr.slots["batch"].phase is Phase.WAITING and not mgr.slots["batch"].blocked_on
    quiet = time.monotonic()
    lease = await asyncio.wait_for(line, 5)  # no MemoryBusy past drain_timeout: it waits for the window
    assert time.monotonic() - quiet >= 0.35 and states(mgr) == {"chat": "stopped", "batch": "ready"}
    lease.release()
    await mgr.shutdown()


async def test_without_the_window_or_with_a_request_waiting_the_start_evicts_at_once() -> None:
    off, _ = make({"chat": 6, "batch": 6}, budget=10)
    await use(off, "chat")
    (await asyncio.wait_for(off.acquire("batch", background=True), 2)).release()
    assert states(off) == {"chat": "stopped", "batch": "ready"}
    await off.shutdown()
    on, _ = make({"chat": 6, "batch": 6}, budget=10, batch_idle_window=60)
    await use(on, "chat")
    line = asyncio.create_task(on.acquire("batch", background=True))
    await until(lambda: on.slots["batch"].phase is Phase.WAITING)
    (await asyncio.wait_for(on.acquire("batch"), 2)).release()  # a request for it: a normal start
    (await asyncio.wait_for(line, 2)).release()
    assert states(on) == {"chat": "stopped", "batch": "ready"}
    await on.shutdown()
