"""The transition table of hub/manager/states.py and `move`, the one way a model's state changes."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import pytest

from hub.engines import get_engine
from hub.errors import HubError
from hub.manager import TRANSITIONS, InvalidTransition, Observer, Slot, State, move
from hub.registry import parse_registry


@dataclass
class Model:
    id: str = "m"
    state: State = State.STOPPED
    reason: str | None = None
    managed: bool = True
    observer: Observer | None = None


ALLOWED = [(a, b) for a, nexts in TRANSITIONS.items() for b in sorted(nexts)]


def test_the_states_and_their_values_are_the_public_ones() -> None:
    assert [s.value for s in State] == ["stopped", "starting", "ready", "stopping", "failed", "sleeping",
                                        "downloading"]


def test_the_table_covers_every_state_and_leads_only_to_states() -> None:
    assert set(TRANSITIONS) == set(State)
    assert all(nexts and nexts <= set(State) for nexts in TRANSITIONS.values())
    assert all(a not in TRANSITIONS[a] for a in State), "no state moves to itself"


def test_the_manager_paths_are_in_the_table() -> None:
    paths = {
        (State.STOPPED, State.STARTING),  # a request or a load starts it
        (State.STARTING, State.READY),  # the engine answers
        (State.STARTING, State.FAILED),  # it exits, times out or cannot launch
        (State.STARTING, State.STOPPED),  # the start is cancelled (hub shutdown)
        (State.READY, State.STOPPING),  # unload, idle ttl, eviction, shutdown
        (State.READY, State.FAILED),  # the engine dies while ready
        (State.STOPPING, State.STOPPED),  # the engine is gone
        (State.FAILED, State.STARTING),  # the next request restarts it
        (State.FAILED, State.STOPPING),  # a failed engine that still has a handle is released
        (State.READY, State.SLEEPING),  # evicted or idle past its ttl, with sleep = true (sleep.py)
        (State.SLEEPING, State.STARTING),  # a request or a load wakes it (a start that wakes the engine)
        (State.SLEEPING, State.STOPPING),  # unload, the sleep budget, shutdown
        (State.SLEEPING, State.FAILED),  # the engine dies asleep
        (State.STOPPED, State.DOWNLOADING),  # a start whose hub repo source is not in the cache pulls it first
        (State.FAILED, State.DOWNLOADING),  # the same, for the next request of a failed model
        (State.DOWNLOADING, State.STARTING),  # pulled: room is made and the engine launched
        (State.DOWNLOADING, State.FAILED),  # the pull failed or was cancelled
        (State.DOWNLOADING, State.STOPPED),  # the start was cancelled, or nobody waits once pulled
    }
    assert set(ALLOWED) == paths


@pytest.mark.parametrize(("from_", "to"), ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
def test_every_allowed_move_works_and_sets_the_reason(from_: State, to: State) -> None:
    m = Model(state=from_, reason="earlier")
    move(m, to, f"why {to}")
    assert m.state is to and m.reason == f"why {to}"
    move(m, next(iter(TRANSITIONS[to])), None)
    assert m.reason is None


INVALID = [
    (State.STOPPED, State.READY),
    (State.STOPPED, State.FAILED),
    (State.STOPPED, State.STOPPING),
    (State.STARTING, State.STOPPING),
    (State.READY, State.STARTING),
    (State.READY, State.STOPPED),
    (State.STOPPING, State.READY),
    (State.STOPPING, State.STARTING),
    (State.STOPPING, State.FAILED),
    (State.FAILED, State.READY),
    (State.FAILED, State.STOPPED),
    (State.READY, State.READY),
    (State.SLEEPING, State.READY),  # a wake goes through starting: it needs room in the budget first
    (State.SLEEPING, State.STOPPED),
    (State.STOPPED, State.SLEEPING),
    (State.STARTING, State.SLEEPING),
    (State.FAILED, State.SLEEPING),
    (State.DOWNLOADING, State.READY),  # pulled is not started: room and a launch come first
    (State.DOWNLOADING, State.STOPPING),  # it has no engine to stop
    (State.SLEEPING, State.DOWNLOADING),  # a sleeping engine has its files
    (State.READY, State.DOWNLOADING),
]


@pytest.mark.parametrize(("from_", "to"), INVALID, ids=[f"{a}->{b}" for a, b in INVALID])
def test_invalid_moves_raise_naming_from_to_and_the_model(from_: State, to: State) -> None:
    m = Model(id="llama", state=from_, reason="kept")
    with pytest.raises(InvalidTransition) as info:
        move(m, to, "nope")
    err = info.value
    assert (err.model, err.from_, err.to) == ("llama", from_, to)
    assert f"'llama': invalid state change {from_.value} -> {to.value}" in str(err)
    assert m.state is from_ and m.reason == "kept", "a refused move changes nothing"


def test_every_move_outside_the_table_raises() -> None:
    for from_, to in product(State, State):
        m = Model(state=from_)
        if to in TRANSITIONS[from_]:
            move(m, to, None)
        else:
            with pytest.raises(InvalidTransition):
                move(m, to, None)


def test_the_observer_is_told_of_each_move_after_it_and_never_of_a_refused_one() -> None:
    seen: list[tuple[State, State, State, str | None]] = []
    m = Model(observer=lambda slot, from_, to, reason: seen.append((slot.state, from_, to, reason)))
    move(m, State.STARTING, None)
    move(m, State.FAILED, "exited")
    with pytest.raises(InvalidTransition):
        move(m, State.READY, None)
    assert seen == [(State.STARTING, State.STOPPED, State.STARTING, None),
                    (State.FAILED, State.STARTING, State.FAILED, "exited")]


def test_invalid_transition_is_a_bug_not_a_hub_error() -> None:
    assert issubclass(InvalidTransition, RuntimeError)
    assert not issubclass(InvalidTransition, HubError)


def test_unmanaged_engines_start_ready_and_never_move() -> None:
    reg = parse_registry({"models": {
        "remote": {"type": "text", "engine": "openai", "args": {"base_url": "http://127.0.0.1:1/v1"}},
        "local": {"type": "text", "engine": "command", "args": {"command": ["x", "{port}"]}},
    }})
    slots = {mid: Slot(mid, cfg, get_engine(cfg.engine)) for mid, cfg in reg.models.items()}
    assert slots["remote"].state is State.READY and not slots["remote"].managed
    assert slots["local"].state is State.STOPPED and slots["local"].managed
    with pytest.raises(InvalidTransition, match="not managed by the hub"):
        move(slots["remote"], State.STOPPING, "unload")
    assert slots["remote"].state is State.READY
