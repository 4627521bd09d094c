"""The eviction planner (hub/manager/planner.py): plain values in, one decision out; no asyncio."""

from __future__ import annotations

import pytest

from hub.errors import MemoryBusy
from hub.manager.planner import (
    AwaitStops,
    Candidate,
    Evict,
    Fits,
    Impossible,
    Peer,
    Release,
    WaitForBusy,
    plan,
)
from hub.manager.states import State

R, S = State.READY, State.STOPPED


def new(need: float, budget: float | None = 10.0) -> Candidate:
    return Candidate("new", need, "local", budget)


def test_fits_without_a_budget_or_with_room() -> None:
    full = [Peer("a", R, 9)]
    assert plan(new(5, budget=None), full) == Fits()
    assert plan(new(1), full) == Fits(), "exactly the budget fits"
    assert plan(new(10), []) == Fits()
    assert plan(new(5), [Peer("a", S, 9), Peer("f", State.FAILED, 9)]) == Fits(), "stopped and failed hold nothing"


def test_the_least_recently_used_idle_model_goes_first_and_only_as_many_as_needed() -> None:
    peers = [Peer("recent", R, 4, last_used=30), Peer("oldest", R, 4, last_used=10), Peer("middle", R, 2, last_used=20)]
    assert plan(new(1), peers) == Evict(("oldest",))
    assert plan(new(5), peers) == Evict(("oldest", "middle"))
    assert plan(new(9), peers) == Evict(("oldest", "middle", "recent"))
    assert plan(new(12), peers) == Evict(("oldest", "middle", "recent")), "all idle ones, then it asks again"


def test_pinned_models_are_never_chosen() -> None:
    peers = [Peer("p", R, 6, pinned=True, last_used=0), Peer("a", R, 4, last_used=50)]
    assert plan(new(4), peers) == Evict(("a",))
    decision = plan(new(5), [peers[0]])
    assert isinstance(decision, Impossible) and decision.holders == (peers[0],)


def test_busy_models_are_waited_for_never_stopped() -> None:
    busy_old = Peer("b", R, 6, in_flight=2, last_used=1)
    idle_new = Peer("i", R, 2, last_used=9)
    assert plan(new(4), [busy_old, idle_new]) == Evict(("i",)), "an idle one goes before any busy one is awaited"
    busy_new = Peer("c", R, 4, in_flight=1, last_used=5)
    decision = plan(new(5), [busy_new, busy_old])
    assert isinstance(decision, WaitForBusy) and decision.busy == (busy_old, busy_new), "least recently used first"
    err = decision.timeout_error()
    assert isinstance(err, MemoryBusy) and err.headers == {"Retry-After": "5"}
    assert err.message == ("model 'new' needs 5 GB of host 'local''s 10 GB budget, but model 'b' is busy "
                           "(2 request(s) in flight); retry when it is idle")


def test_a_failed_engine_with_a_handle_is_released_once_no_idle_model_is_left() -> None:
    failed = Peer("f", State.FAILED, 3, failed_with_handle=True)
    assert plan(new(4), [Peer("p", R, 8, pinned=True), failed]) == Release("f")
    assert plan(new(4), [Peer("a", R, 8), failed]) == Evict(("a",))
    decision = plan(new(4), [Peer("p", R, 8, pinned=True), Peer("g", State.FAILED, 3)])
    assert isinstance(decision, Impossible), "a failed model without an engine has nothing to release"


def test_stops_in_progress_are_awaited_first() -> None:
    peers = [Peer("a", R, 4, last_used=0), Peer("s", State.STOPPING, 5, stopping=True)]
    assert plan(new(4), peers) == AwaitStops(("s",))


@pytest.mark.parametrize("holder", [Peer("p", R, 6, pinned=True), Peer("s", State.STARTING, 6)])
def test_impossible_when_only_pinned_or_starting_models_hold_the_memory(holder: Peer) -> None:
    decision = plan(new(5), [holder, Peer("off", S, 9)])
    assert isinstance(decision, Impossible)
    assert (decision.free_gb, decision.holders) == (4, (holder,))
    state = "ready, pinned" if holder.pinned else "starting"
    assert decision.error().message == (
        f"model 'new' needs 5 GB but host 'local' has 4 of 10 GB free and nothing can be unloaded: "
        f"{holder.id!r} ({state}, 6 GB)"
    )


def test_impossible_when_the_model_alone_exceeds_the_budget() -> None:
    decision = plan(new(12), [])
    assert isinstance(decision, Impossible) and decision.free_gb == 10
    assert decision.error().message.endswith("nothing can be unloaded: no other model holds memory")
