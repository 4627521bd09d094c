"""A model's lifecycle states and the one table of the moves allowed between them.

    stopped ──start──> starting ──answers──> ready ──stop──> stopping ──gone──> stopped
       ^                │  │  ^                │                ^
       └───cancelled────┘  │  │ next request   │ engine exits   │ release (it still
          exits, times out,│  │ (restart)      │                │ has a handle)
          cannot launch    v  │                │                │
                          failed <─────────────┘                │
                            └───────────────────────────────────┘

    ready ──sleep──> sleeping ──wake──> starting ──answers──> ready
                       │  └──stop (unload, sleep budget, shutdown)──> stopping
                       └──engine exits──> failed

    stopped | failed ──source not in the cache──> downloading ──pulled──> starting
                                                     │  └──the pull fails──> failed
                                                     └──cancelled, or pulled with nobody waiting──> stopped

- downloading: the start task pulls the model's hub repo source into the cache its engine reads (hub/downloads/),
             after placement and before making room: it holds no memory; start_timeout counts from its end.
- starting:  the start task made room in the budget and launches the engine, then waits for it to answer.
- sleep:     an eviction or the idle ttl of a model with `sleep = true` whose engine can sleep, when its host's
             sleep budget allows (hub/manager/sleep.py): the engine keeps its process and frees its GPU memory.
- wake:      a request (or a load) for a sleeping model: like a start it makes room in the budget and moves to
             starting, then asks the engine to wake instead of launching one; ready once it answers.
- stop:      an unload, the idle ttl, an eviction or the hub's shutdown; it waits for the engine to exit.
- cancelled: the start task was cancelled (hub shutdown) after it had begun launching.
- failed:    keeps the reason; the next request starts the model again.

Every change of a managed model's state goes through `move`, which raises InvalidTransition (a bug in the hub,
never an HTTP error) for a move the table does not list, and tells the slot's `observer` (an Observer: the metrics)
of each move. A model starts stopped; an unmanaged engine (`openai`) starts ready and never moves.

Within a state, a model's `Phase` says what its tasks are doing where the state alone does not (one at a time):

- waiting:        stopped, failed or sleeping: its start waits for memory that busy or starting models hold (its
                  `blocked_on`); they are contended meanwhile (the run rule, hub/manager/queue.py).
- waking:         from the move out of sleeping to the move to ready: its start wakes the engine instead of launching
                  one (the observer tells a wake from a start by it).
- falling asleep: ready: its engine is being put to sleep; it takes no new request and still holds its memory.
- draining:       a registry reload restarts (or removes) it (hub/manager/reload.py): ready, it takes no new request
                  while its requests in flight finish; then, stopped, it is not started again until it has its new
                  config. Its waiting requests wait for the new engine.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Protocol

log = logging.getLogger("hub.manager")


class State(StrEnum):
    """A model's lifecycle state; the values are what GET /hub/models and /v1/models show."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"
    SLEEPING = "sleeping"
    DOWNLOADING = "downloading"


class Phase(StrEnum):
    """What a model's tasks are doing within its state (the module's docstring): the sub-states, which the hub's
    own logic reads and the API does not show."""

    NONE = "none"
    WAITING = "waiting"
    WAKING = "waking"
    FALLING_ASLEEP = "falling asleep"
    DRAINING = "draining"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING, State.DOWNLOADING}),
    State.STARTING: frozenset({State.READY, State.FAILED, State.STOPPED}),
    State.READY: frozenset({State.STOPPING, State.FAILED, State.SLEEPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.FAILED: frozenset({State.STARTING, State.STOPPING, State.DOWNLOADING}),
    State.SLEEPING: frozenset({State.STARTING, State.STOPPING, State.FAILED}),
    State.DOWNLOADING: frozenset({State.STARTING, State.FAILED, State.STOPPED}),
}
"""The allowed next states of each state: the diagram above, and nothing else."""

HOLDS_MEMORY = frozenset({State.STARTING, State.READY, State.STOPPING})
"""The states in which a model counts against its host's memory budget (GPU or engine memory). A sleeping model
holds none: it counts against its host's sleep budget (RAM) instead."""


class InvalidTransition(RuntimeError):
    """A state change that the table does not allow: a bug in the hub, not something a request did."""

    def __init__(self, model: str, from_: State, to: State, managed: bool = True) -> None:
        self.model, self.from_, self.to = model, from_, to
        if not managed:
            why = "its engine is not managed by the hub, so it is always ready and never changes state"
        else:
            allowed = ", ".join(sorted(TRANSITIONS[from_])) or "nothing"
            why = f"from {from_} it may only move to {allowed}"
        super().__init__(f"model {model!r}: invalid state change {from_} -> {to}: {why}")


class Observer(Protocol):
    """Told of every move of a model, after the move: the model, its state before and after, and its new reason
    (hub/metrics.py counts them)."""

    def __call__(self, slot: Movable, from_: State, to: State, reason: str | None, /) -> None: ...


class Movable(Protocol):
    """What `move` needs of a model (hub.manager.Slot is one)."""

    id: str
    state: State
    reason: str | None
    observer: Observer | None

    @property
    def managed(self) -> bool: ...


def move(slot: Movable, to: State, reason: str | None) -> None:
    """Change a model's state to `to` and its reason (None, or why it is in that state), or raise
    InvalidTransition when the table does not allow it."""
    from_ = slot.state
    if not slot.managed or to not in TRANSITIONS[from_]:
        raise InvalidTransition(slot.id, from_, to, slot.managed)
    slot.state, slot.reason = to, reason
    if slot.observer:
        slot.observer(slot, from_, to, reason)
    log.debug("%s: %s -> %s%s", slot.id, from_, to, f" ({reason})" if reason else "")
