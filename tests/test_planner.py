"""The planners (hub/manager/planner.py): plain values in, one decision (or host) out; no asyncio."""

from __future__ import annotations

from hub.errors import MemoryBusy
from hub.manager.planner import (
    AwaitStops,
    Candidate,
    Evict,
    Fits,
    HostView,
    Impossible,
    Peer,
    Release,
    WaitForBusy,
    place,
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


def test_impossible_when_only_pinned_models_hold_the_memory() -> None:
    holder = Peer("p", R, 6, pinned=True)
    decision = plan(new(5), [holder, Peer("off", S, 9)])
    assert isinstance(decision, Impossible)
    assert (decision.free_gb, decision.holders) == (4, (holder,))
    assert decision.error().message == (
        "model 'new' needs 5 GB but host 'local' has 4 of 10 GB free and nothing can be unloaded: "
        "'p' (ready, pinned, 6 GB)"
    )


def test_a_starting_model_is_waited_for_it_can_be_evicted_once_ready_and_idle() -> None:
    starting = Peer("s", State.STARTING, 6)
    assert plan(new(5), [starting, Peer("off", S, 9)]) == WaitForBusy("new", 5, "local", 10, (), (starting,))
    busy = Peer("b", R, 3, in_flight=1)
    assert plan(new(5), [starting, busy]).busy == (busy,), "busy and starting ones are waited for together"
    pinned = Peer("p", State.STARTING, 6, pinned=True)
    assert isinstance(plan(new(5), [pinned]), Impossible), "a pinned model will not give its memory back"
    decision = plan(new(5), [Peer("p", R, 6, pinned=True), busy])
    assert isinstance(decision, Impossible), "6 pinned + 5 > 10 whatever the busy model does"


def test_impossible_when_the_model_alone_exceeds_the_budget() -> None:
    decision = plan(new(12), [])
    assert isinstance(decision, Impossible) and decision.free_gb == 10
    assert decision.error().message.endswith("nothing can be unloaded: no other model holds memory")


def host(name: str, *peers: Peer, budget: float | None = 10.0, holds: bool = False, up: bool = True) -> HostView:
    return HostView(name, budget, tuple(peers), holds, up)


def test_place_prefers_a_host_where_it_fits_then_one_holding_its_image_then_the_least_loaded() -> None:
    full = host("full", Peer("a", R, 8))
    roomy = host("roomy", Peer("b", R, 2, in_flight=3))
    quiet = host("quiet", Peer("c", R, 2))
    assert place("new", 5, [full, roomy, quiet]) == "quiet", "fits without eviction, fewest requests"
    assert place("new", 5, [full, roomy]) == "roomy", "fits, though busier"
    assert place("new", 5, [full, host("img", Peer("b", R, 2, in_flight=3), holds=True), quiet]) == "img"
    assert place("new", 5, [host("x"), host("y")]) == "x", "ties keep the registry's order"
    assert place("new", 5, [host("down", up=False), host("y", Peer("a", R, 8))]) == "y", "unreachable: left out"
    assert place("new", 5, [host("down", up=False)]) == "down", "none answers: the first (its start says why)"


def test_place_evicts_on_the_least_loaded_host_when_it_fits_nowhere() -> None:
    busy = host("busy", Peer("a", R, 8, in_flight=2))
    queued = host("queued", Peer("b", R, 8, queued=4))
    calm = host("calm", Peer("c", R, 4, in_flight=1), Peer("d", R, 4))
    assert place("new", 5, [busy, queued, calm]) == "calm", "an idle model to evict beats waiting for busy ones"
    assert place("new", 5, [busy, queued]) == "queued", "idle (nothing in flight) though requests queue for it"
    assert place("new", 5, [busy, host("busier", Peer("a", R, 8, in_flight=5))]) == "busy", "least loaded"
    half = host("half", Peer("c", R, 8, in_flight=1), Peer("d", R, 1))
    assert place("new", 5, [half, host("busier", Peer("a", R, 8, in_flight=5))]) == "half"
    assert place("new", 5, [host("busier", Peer("a", R, 8, in_flight=5)), half, queued]) == "queued", \
        "evicting d on half is not enough: c must be waited for there"
    pinned = host("pinned", Peer("p", R, 8, pinned=True))
    assert place("new", 5, [pinned, busy]) == "busy", "a host where room can never be made is left out"
    assert place("new", 5, [host("small", budget=4), pinned]) == "small", "impossible everywhere: the first"
