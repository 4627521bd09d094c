"""Manager rules with an in-memory runtime and engine: no processes, exact control over timing."""

from __future__ import annotations

import asyncio
import threading

import pytest

from hub.errors import MemoryBusy, StartFailed
from hub.manager import State
from tests.helpers import FakeRuntime, make, states, until, use


async def test_single_flight() -> None:
    mgr, rt = make({"a": 1})
    await asyncio.gather(*(use(mgr, "a") for _ in range(50)))
    assert rt.started == ["a"] and mgr.slots["a"].state == State.READY
    await mgr.shutdown()
    assert rt.stopped == ["a"]


async def test_unload_while_starting_waits_then_stops() -> None:
    mgr, rt = make({"a": 1}, rt=FakeRuntime(ready_after=0.2))
    starting = asyncio.create_task(use(mgr, "a"))
    await asyncio.sleep(0.05)
    assert mgr.slots["a"].state == State.STARTING
    await mgr.unload("a")
    await starting
    assert mgr.slots["a"].state == State.STOPPED and rt.stopped == ["a"]


async def test_request_during_stop_restarts_after_it() -> None:
    mgr, rt = make({"a": 1})
    await use(mgr, "a")
    stopping = asyncio.create_task(mgr.unload("a"))
    while mgr.slots["a"].state != State.STOPPING:
        await asyncio.sleep(0)
    await use(mgr, "a")
    await stopping
    # the request waited for the stop, then started the model again
    assert rt.started == ["a", "a"]
    await mgr.shutdown()


async def test_failed_start_is_reported_and_retried() -> None:
    rt = FakeRuntime(fail={"a"})
    mgr, _ = make({"a": 1}, rt=rt)
    with pytest.raises(StartFailed, match=r"(?s)exited with code 1 before it was ready.*fake log line"):
        await use(mgr, "a")
    assert mgr.slots["a"].state == State.FAILED
    rt.fail.clear()
    await use(mgr, "a")
    assert mgr.slots["a"].state == State.READY and rt.started == ["a", "a"]
    await mgr.shutdown()


async def test_budget_evicts_lru_and_refuses_when_pinned_hold_it() -> None:
    mgr, _ = make({"a": 4, "b": 4, "c": 4, "d": 5, "p": 6}, budget=10, pinned=("p",))
    await use(mgr, "a")
    await use(mgr, "b")
    await use(mgr, "a")
    await use(mgr, "c")  # b is the least recently used
    assert states(mgr) == {"a": "ready", "b": "stopped", "c": "ready", "d": "stopped", "p": "stopped"}
    await use(mgr, "p")  # 6 GB: a (LRU) goes, c stays
    assert states(mgr) == {"a": "stopped", "b": "stopped", "c": "ready", "d": "stopped", "p": "ready"}
    with pytest.raises(MemoryBusy, match=r"'p' \(ready, pinned, 6 GB\)"):
        await use(mgr, "d")  # 5 + pinned 6 > 10 whatever is evicted
    assert states(mgr)["p"] == "ready" and mgr.used_gb("local") <= 10
    await mgr.shutdown()


async def test_busy_model_waits_for_drain_then_is_swapped() -> None:
    mgr, _ = make({"a": 6, "b": 6}, budget=10)
    await use(mgr, "a")
    holder = asyncio.create_task(use(mgr, "a", hold=0.1))  # drains within drain_timeout (0.3 s)
    await asyncio.sleep(0.01)
    await use(mgr, "b")
    await holder
    assert states(mgr) == {"a": "stopped", "b": "ready"}
    holder = asyncio.create_task(use(mgr, "b", hold=1.0))  # does not drain in time
    await asyncio.sleep(0.01)
    with pytest.raises(MemoryBusy, match="model 'b' is busy"):
        await use(mgr, "a")
    await holder
    assert states(mgr) == {"a": "stopped", "b": "ready"}
    await mgr.shutdown()


async def test_crash_marks_failed_and_next_request_restarts() -> None:
    mgr, rt = make({"a": 1})
    await use(mgr, "a")
    rt.exits["a"].set_result("exited with code 139")
    await asyncio.sleep(0.05)
    assert mgr.slots["a"].state == State.FAILED
    assert mgr.slots["a"].reason == "the engine exited with code 139 unexpectedly"
    await use(mgr, "a")
    assert mgr.slots["a"].state == State.READY and rt.started == ["a", "a"]
    await mgr.shutdown()


async def test_ttl_stops_idle_models_but_not_pinned_or_busy() -> None:
    mgr, _ = make({"a": 1, "b": 1, "p": 1}, pinned=("p",), idle_ttl=0.5)
    await mgr.startup()
    await asyncio.gather(use(mgr, "a"), use(mgr, "p"))
    busy = await mgr.acquire("b")  # in flight until released below
    # the ttl pass (every second) that stops a looks at b and p too: wait for it, not for a guess at its time
    await until(lambda: states(mgr)["a"] not in ("ready", "stopping"))
    assert states(mgr) == {"a": "stopped", "b": "ready", "p": "ready"}
    busy.release()
    await mgr.shutdown()


async def test_budget_evicts_as_many_lru_idle_models_as_needed_together() -> None:
    mgr, rt = make({"a": 3, "b": 3, "c": 3, "big": 7}, budget=10)
    for mid in ("a", "b", "c", "a"):
        await use(mgr, mid)
    await use(mgr, "big")  # b then c are the least recently used; 3 + 7 fits
    assert states(mgr) == {"a": "ready", "b": "stopped", "c": "stopped", "big": "ready"}
    assert sorted(rt.stopped) == ["b", "c"] and mgr.slots["b"].reason == "evicted to make room for 'big'"
    await mgr.shutdown()


class SlowLogs(FakeRuntime):
    """A runtime whose `logs` blocks its caller's thread until released (a Docker host or a Ray node that answers
    slowly), for 10 s at most."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.entered, self.released = threading.Event(), threading.Event()

    def logs(self, model_id: str, tail: int = 100) -> str:
        self.entered.set()
        return "fake log line\n" if self.released.wait(10) else "the hub's loop was blocked\n"


async def test_a_failed_start_reads_the_engine_log_off_the_event_loop() -> None:
    """The log of a failed start comes from the runtime's blocking `logs` (a call to a Docker host or a Ray actor):
    the hub keeps serving meanwhile."""
    rt = SlowLogs(fail={"a"})
    mgr, _ = make({"a": 1}, rt=rt)
    started = asyncio.create_task(use(mgr, "a"))
    await until(rt.entered.is_set, timeout=30)
    rt.released.set()
    with pytest.raises(StartFailed, match=r"(?s)exited with code 1 before it was ready.*fake log line"):
        await started
    await mgr.shutdown()
