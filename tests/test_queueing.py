"""Queues, limits, runs and placement (hub/manager/queue.py, planner.place) with the in-memory runtime of
test_manager.py: no processes, exact control over timing; assertions on counts and order, not durations."""

from __future__ import annotations

import asyncio
import time

import pytest

from hub.config import Limits
from hub.engines.base import LaunchSpec, Upstream
from hub.errors import ClientLeft, MemoryBusy, TooManyRequests, WaitTimeout
from hub.manager import Manager, Phase, State
from hub.manager.queue import ModelQueue, admits, retry_after
from hub.runtimes.base import Handle, Runtime
from tests.helpers import FakeRuntime, make, states, until, use


def test_the_run_rule() -> None:
    lim = Limits(max_concurrency=0, max_queue=10, max_wait=60, max_run=10, min_residency=5)
    assert admits(arrival=50, now=50, contended_since=None, ready_since=0, limits=lim), "nobody else waits"
    assert admits(arrival=19, now=50, contended_since=20, ready_since=0, limits=lim), "it came first"
    assert admits(arrival=25, now=29, contended_since=20, ready_since=0, limits=lim), "its run is not over"
    assert not admits(arrival=31, now=31, contended_since=20, ready_since=0, limits=lim), "the run is over"
    assert admits(arrival=31, now=31, contended_since=20, ready_since=28, limits=lim), "just started: it stays"
    assert not admits(arrival=34, now=34, contended_since=20, ready_since=28, limits=lim)
    off = Limits(max_concurrency=0, max_queue=10, max_wait=60, max_run=0, min_residency=0)
    assert not admits(arrival=21, now=21, contended_since=20, ready_since=0, limits=off), "arrival order"
    assert retry_after(None, 0, 1) == 1 and retry_after(2.0, 4, 2) == 5 and retry_after(30.0, 100, 1) == 60


class Alone:
    """A model (queue.Queued) and its Dispatch for a ModelQueue on its own: one place, served while `open`; the
    pump serves the queue as dispatch.Dispatcher does."""

    id, reason, engine = "m", None, None

    def __init__(self, max_queue: int = 2, max_wait: float = 60) -> None:
        self.limits = Limits(max_concurrency=1, max_queue=max_queue, max_wait=max_wait, max_run=0, min_residency=0)
        self.queue, self.open, self.pumps = ModelQueue(self), True, 0

    def upstream(self) -> Upstream:
        return Upstream("http://m")

    def may_serve(self, model: str, arrival: float, now: float) -> bool:
        return self.open and self.queue.in_flight < 1

    def why_waiting(self, model: str, ahead: int) -> str:
        return f"closed with {ahead} ahead"

    def pump(self) -> None:
        self.pumps += 1
        self.queue.drop_forfeited()
        self.queue.serve(self, time.monotonic())


async def test_a_model_queue_grants_in_order_refuses_when_full_and_counts() -> None:
    m = Alone()
    q = m.queue
    first = await q.acquire(m)  # a free place and nobody before it: at once, without a pump
    assert (q.in_flight, m.pumps, first.upstream.base_url, first.slot) == (1, 0, "http://m", m)
    assert not q.idle.is_set()
    waiting = [asyncio.create_task(q.acquire(m)) for _ in range(2)]
    await until(lambda: len(q) == 2)
    with pytest.raises(TooManyRequests, match=r"1 request\(s\) in flight .* 2 waiting \(max_queue 2\)"):
        await q.acquire(m)
    first.release()
    first.release()  # idempotent: one place freed, not two
    second = await waiting[0]
    assert q.in_flight == 1 and len(q) == 1 and not waiting[1].done()
    second.release()
    (await waiting[1]).release()
    assert q.in_flight == 0 and q.idle.is_set() and not q
    assert (q.admitted, q.rejected, q.timed_out, q.abandoned) == (3, 1, 0, 0)
    assert q.service_s is not None and q.last_used > 0


async def test_a_model_queue_times_out_saying_why_and_counts_loads() -> None:
    m = Alone(max_wait=0.05)
    m.open = False
    with pytest.raises(WaitTimeout, match="closed with 0 ahead"):
        await m.queue.acquire(m)
    assert m.queue.timed_out == 1 and not m.queue and not m.queue.awaited
    with m.queue.loading():
        assert m.queue.awaited and m.queue.loads == 1
    assert not m.queue.awaited


async def test_a_starting_model_is_waited_for_not_refused() -> None:
    """The issue's 503: b asked while a (which b must evict) was still starting."""
    mgr, rt = make({"a": 6, "b": 6}, budget=10, rt=FakeRuntime(ready_after=0.2))
    first = asyncio.create_task(use(mgr, "a", hold=0.05))
    await until(lambda: mgr.slots["a"].state == State.STARTING)
    await use(mgr, "b")  # waits for a to be ready, served and idle, then evicts it
    await first
    assert rt.started == ["a", "b"] and states(mgr) == {"a": "stopped", "b": "ready"}
    await mgr.shutdown()


async def test_max_concurrency_and_max_queue_then_429() -> None:
    mgr, _ = make({"a": 1}, extra={"a": {"max_concurrency": 2, "max_queue": 2}})
    s = mgr.slots["a"]
    held = [await mgr.acquire("a"), await mgr.acquire("a")]
    waiting = [asyncio.create_task(mgr.acquire("a")) for _ in range(2)]
    await until(lambda: len(s.queue) == 2)
    assert s.in_flight == 2
    with pytest.raises(TooManyRequests) as e:
        await mgr.acquire("a")
    assert e.value.status == 429 and int(e.value.headers["Retry-After"]) >= 1
    assert "2 request(s) in flight (max_concurrency 2) and 2 waiting (max_queue 2)" in e.value.message
    held[0].release()
    first = await waiting[0]
    assert s.in_flight == 2 and len(s.queue) == 1, "one place freed, the oldest waiter took it"
    held[1].release()
    first.release()
    (await waiting[1]).release()
    assert s.in_flight == 0 and not s.queue and (s.queue.admitted, s.queue.rejected) == (4, 1)
    await mgr.shutdown()


async def test_a_request_whose_client_left_leaves_the_queue() -> None:
    mgr, _ = make({"a": 1}, extra={"a": {"max_concurrency": 1}})
    s = mgr.slots["a"]
    held = await mgr.acquire("a")
    gone = asyncio.Event()
    cancelled = asyncio.create_task(mgr.acquire("a"))
    left = asyncio.create_task(mgr.acquire("a", abandoned=gone.wait))
    stays = asyncio.create_task(mgr.acquire("a"))
    await until(lambda: len(s.queue) == 3)
    cancelled.cancel()  # what a server does to a request's task when its client disconnects
    await until(lambda: len(s.queue) == 2)
    assert cancelled.cancelled()
    gone.set()  # as the gateway's abandoned() returns when ASGI receive() gives http.disconnect
    with pytest.raises(ClientLeft):
        await left
    assert len(s.queue) == 1
    held.release()
    (await stays).release()
    assert s.in_flight == 0 and not s.queue and s.queue.abandoned == 2
    await mgr.shutdown()


async def test_a_lease_granted_as_its_waiter_is_cancelled_goes_back() -> None:
    mgr, _ = make({"a": 1}, extra={"a": {"max_concurrency": 1}})
    s = mgr.slots["a"]
    held = await mgr.acquire("a")
    waiter = asyncio.create_task(mgr.acquire("a"))
    await until(lambda: len(s.queue) == 1)
    held.release()  # grants the lease to the waiter ...
    waiter.cancel()  # ... whose task is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert s.in_flight == 0 and not s.queue
    await mgr.shutdown()


async def test_max_wait_bounds_every_wait() -> None:
    mgr, _ = make({"a": 1}, extra={"a": {"max_concurrency": 1, "max_wait": 0.2}})
    held = await mgr.acquire("a")
    with pytest.raises(WaitTimeout, match=r"within max_wait \(0.2s\): 1 request\(s\) in flight"):
        await mgr.acquire("a")
    assert not mgr.slots["a"].queue and mgr.slots["a"].queue.timed_out == 1
    held.release()
    await mgr.shutdown()


async def test_a_failed_start_fails_every_waiter_and_the_next_request_starts_again() -> None:
    rt = FakeRuntime(fail={"a"})
    mgr, _ = make({"a": 1}, rt=rt)
    results = await asyncio.gather(*(use(mgr, "a") for _ in range(5)), return_exceptions=True)
    assert len(rt.started) == 1 and all("exited with code 1" in str(r) for r in results)
    assert not mgr.slots["a"].queue
    rt.fail.clear()
    await use(mgr, "a")
    assert mgr.slots["a"].state == State.READY
    await mgr.shutdown()


async def ab_workload(mgr: Manager, clients: int = 4, rounds: int = 6, hold: float = 0.02) -> None:
    """Each client alternates a, b, a, b, ... (client i starts with model i % 2)."""
    async def client(i: int) -> None:
        for r in range(rounds):
            await use(mgr, "ab"[(i + r) % 2], hold)

    await asyncio.gather(*(client(i) for i in range(clients)))


@pytest.mark.parametrize("max_run, min_residency", [(0, 0), (10, 5)])
async def test_alternating_clients_are_all_served(max_run: float, min_residency: float) -> None:
    """4 clients alternate two models that do not fit together: every request is served, with or without runs."""
    mgr, _ = make({"a": 6, "b": 6}, budget=10, rt=FakeRuntime(ready_after=0.05), max_run=max_run,
                   min_residency=min_residency)
    await ab_workload(mgr)  # raises if any request fails
    assert mgr.used_gb("local") <= 10 and sum(s.queue.admitted for s in mgr.slots.values()) == 24
    await mgr.shutdown()


async def test_runs_swap_less_than_arrival_order() -> None:
    starts = {}
    for name, keys in {"off": {"max_run": 0, "min_residency": 0}, "on": {"max_run": 10, "min_residency": 5}}.items():
        mgr, rt = make({"a": 6, "b": 6}, budget=10, rt=FakeRuntime(ready_after=0.05), **keys)
        await ab_workload(mgr)
        starts[name] = len(rt.started)
        await mgr.shutdown()
    # in runs, each start serves every client once (6 rounds: about 6 starts); in arrival order, about one each
    assert starts["on"] <= 8 and starts["off"] >= 12, starts


async def test_a_run_ends_though_its_model_is_still_asked_for() -> None:
    """a is asked for back to back by two clients without end; b's request still gets its turn after max_run."""
    mgr, rt = make({"a": 6, "b": 6}, budget=10, max_run=0.3, min_residency=0.1)
    stop = asyncio.Event()

    async def keep_asking() -> int:
        n = 0
        while not stop.is_set():
            await use(mgr, "a", 0.02)
            n += 1
        return n

    clients = [asyncio.create_task(keep_asking()) for _ in range(2)]
    await until(lambda: mgr.slots["a"].queue.admitted >= 4)
    await use(mgr, "b")
    assert not any(c.done() for c in clients), "b was served while a was still asked for"
    stop.set()
    assert sum(await asyncio.gather(*clients)) >= 4
    assert rt.started[:2] == ["a", "b"] and rt.stopped[0] == "a"
    await mgr.shutdown()


async def test_a_busy_model_that_does_not_drain_still_fails_the_swap() -> None:
    """After its run, a model's requests in flight get drain_timeout (0.3 s here) to end; then MemoryBusy."""
    mgr, _ = make({"a": 6, "b": 6}, budget=10, max_run=0.1, min_residency=0)
    holder = asyncio.create_task(use(mgr, "a", hold=1.5))
    await until(lambda: mgr.slots["a"].in_flight == 1)
    with pytest.raises(MemoryBusy, match="model 'a' is busy"):
        await use(mgr, "b")
    await holder
    assert states(mgr) == {"a": "ready", "b": "stopped"}
    await mgr.shutdown()


class OnHost(Runtime):
    """One host's runtime over a shared FakeRuntime: records where each model started; `images` says which
    hosts hold the models' images; hosts in `down` cannot be reached."""

    def __init__(self, inner: FakeRuntime, host: str, images: set[str], down: set[str]) -> None:
        self.inner, self.host, self.images, self.down = inner, host, images, down

    async def holds(self, spec: LaunchSpec) -> bool:
        if self.host in self.down:
            from hub.errors import RuntimeFailure

            raise RuntimeFailure(f"host {self.host} is down")
        return self.host in self.images

    async def start(self, model_id: str, spec: LaunchSpec, port: int) -> Handle:
        self.inner.placed.append((model_id, self.host))
        return await self.inner.start(model_id, spec, port)

    async def alive(self, handle: Handle) -> bool:
        return await self.inner.alive(handle)

    async def wait_exit(self, handle: Handle) -> str:
        return await self.inner.wait_exit(handle)

    async def stop(self, handle: Handle, timeout: float) -> None:
        await self.inner.stop(handle, timeout)

    def logs(self, model_id: str, tail: int = 100) -> str:
        return self.inner.logs(model_id, tail)


def two_hosts(models: dict[str, float], images: set[str] = frozenset(), down: set[str] = frozenset(),
              **kw) -> tuple[Manager, FakeRuntime]:
    rt = FakeRuntime()
    rt.placed = []
    hosts = {h: {"docker": f"unix:///nowhere/{h}.sock", "memory_budget_gb": 4} for h in ("h1", "h2")}
    runtimes: dict[str, OnHost] = {}

    def factory(name: str, host: str) -> Runtime:
        return runtimes.setdefault(host, OnHost(rt, host, set(images), set(down)))

    extra = {m: {"host": ["h1", "h2"]} for m in models}
    return make(models, rt=rt, extra=extra, hosts=hosts, factory=factory, drain_timeout=0.3, **kw)


async def test_placement_fills_a_free_host_then_evicts_on_the_least_loaded() -> None:
    mgr, rt = two_hosts({"a": 3, "b": 3, "c": 3})
    await use(mgr, "a")
    await use(mgr, "b")  # h1 is full: b fits on h2
    assert rt.placed == [("a", "h1"), ("b", "h2")]
    assert (mgr.slots["a"].host, mgr.slots["b"].host) == ("h1", "h2")
    busy = asyncio.create_task(use(mgr, "b", hold=0.5))
    await until(lambda: mgr.slots["b"].in_flight == 1)
    await use(mgr, "c")  # fits nowhere: h1's model is idle, h2's busy, so c goes to h1 in a's place
    assert rt.placed[-1] == ("c", "h1") and states(mgr) == {"a": "stopped", "b": "ready", "c": "ready"}
    await busy
    await use(mgr, "c")
    await use(mgr, "a")  # a ran on h1 last time; now b (h2) is the least recently used idle model
    assert rt.placed[-1] == ("a", "h2") and mgr.slots["a"].host == "h2" and states(mgr)["b"] == "stopped"
    assert mgr.used_gb("h1") == 3 and mgr.used_gb("h2") == 3
    await mgr.shutdown()


async def test_placement_prefers_a_host_holding_the_image_and_skips_unreachable_ones() -> None:
    mgr, rt = two_hosts({"a": 1}, images={"h2"})
    await use(mgr, "a")
    assert rt.placed == [("a", "h2")]
    await mgr.shutdown()
    mgr, rt = two_hosts({"a": 1}, down={"h1"})
    await use(mgr, "a")
    assert rt.placed == [("a", "h2")]
    await mgr.shutdown()


async def test_a_start_nobody_waits_for_any_more_gives_up_before_it_evicts() -> None:
    mgr, rt = make({"a": 6, "b": 6}, budget=10, max_run=0, min_residency=0)
    holder = asyncio.create_task(use(mgr, "a", hold=0.5))
    await until(lambda: mgr.slots["a"].in_flight == 1)
    waiter = asyncio.create_task(mgr.acquire("b"))
    await until(lambda: mgr.slots["b"].blocked_on == {"a"})
    assert mgr.slots["b"].phase is Phase.WAITING and mgr.slots["b"].waiting_since() is not None
    waiter.cancel()  # its client left
    await holder
    await until(lambda: mgr.slots["b"].start_task is None)
    assert rt.started == ["a"] and states(mgr) == {"a": "ready", "b": "stopped"}, "a was not evicted for nobody"
    assert mgr.slots["b"].phase is Phase.NONE and not mgr.slots["b"].blocked_on
    await mgr.shutdown()
