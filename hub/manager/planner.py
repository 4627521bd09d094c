"""The planners: where a cold start goes (`place`) and what to do so that it fits its host's budget (`plan`).

Pure: they see plain values (a `Candidate`, a `Peer` per other managed model on a host, a `HostView` per host) and
return one answer. Manager._make_room carries out `plan`'s decision (under the host's budget lock; it waits outside
it) and asks again until the answer is `Fits` or an error. In order:

1. no budget on the host, or the model fits beside what the others hold:          Fits
2. some other model is being stopped already: its memory is about to be freed:     AwaitStops
3. ready, idle, unpinned models: the least recently used ones, as few as fit:      Evict
4. a failed model that still has an engine:                                       Release
5. ready unpinned models, all busy (or protected), or unpinned models still starting: their
   requests will end (drain_timeout once they stop taking new ones, see
   queue.py) and a started model can be evicted once it is idle:                  WaitForBusy
6. only pinned models hold the memory (or the model alone exceeds the budget):     Impossible

A model counts against the budget while it is starting, ready or stopping (states.HOLDS_MEMORY). Pinned models
are never chosen; busy and starting ones are only waited for, and so are protected ones: models that served a
request within [hub] batch_idle_window, when only batch lines wait for the candidate (the manager marks them).
Idle means no request in flight: a ready model whose queued requests must wait for another model's turn (queue.py)
is idle.

`place` picks a host among a model's hosts: one where it fits without eviction (one that already holds its image
first, then the least loaded, then the registry's order), else one where room can be made, preferring hosts with
idle models to evict over hosts whose models must be waited for, then the least loaded (fewest requests in flight
or queued on its models), then one holding its image, then the one whose models were used least recently.
Unreachable hosts are left out while another one answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hub.errors import MemoryBusy
from hub.manager.states import HOLDS_MEMORY, State


@dataclass(frozen=True)
class Candidate:
    """The model that is about to start."""

    id: str
    need_gb: float
    host: str
    budget_gb: float | None  # None: the host has no budget


@dataclass(frozen=True)
class Peer:
    """Another managed model on the candidate's host, as the planner sees it."""

    id: str
    state: State
    memory_gb: float
    pinned: bool = False
    in_flight: int = 0
    queued: int = 0  # requests waiting for it
    last_used: float = 0.0
    stopping: bool = False  # a stop is in progress
    failed_with_handle: bool = False  # failed, but its engine was not released
    protected: bool = False  # requests used it within [hub] batch_idle_window: a start for batch lines waits for it


@dataclass(frozen=True)
class Fits:
    """Start it: the budget has room."""


@dataclass(frozen=True)
class AwaitStops:
    """Wait for the stops in progress of these models, then ask again."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class Evict:
    """Stop these idle models, least recently used first: the fewest that make room, or all of them when even
    that is not enough (then ask again)."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class Release:
    """Stop the engine this failed model still holds, then ask again."""

    id: str


@dataclass(frozen=True)
class WaitForBusy:
    """Wait until one of these busy models (least recently used first) is idle or one of the `starting` ones is
    ready, then ask again; with no model starting, at most until the drain deadline: past it, fail with
    `timeout_error()`."""

    model: str
    need_gb: float
    host: str
    budget_gb: float
    busy: tuple[Peer, ...]
    starting: tuple[Peer, ...] = ()

    def timeout_error(self) -> MemoryBusy:
        """MemoryBusy naming the least recently used busy model."""
        first = self.busy[0]
        return MemoryBusy(
            f"model {self.model!r} needs {self.need_gb:g} GB of host {self.host!r}'s {self.budget_gb:g} GB budget, "
            f"but model {first.id!r} is busy ({first.in_flight} request(s) in flight); retry when it is idle",
            headers={"Retry-After": "5"},
        )


@dataclass(frozen=True)
class Impossible:
    """Nothing can be stopped or waited for: fail with `error()`."""

    model: str
    need_gb: float
    host: str
    budget_gb: float
    free_gb: float
    holders: tuple[Peer, ...]  # the models holding memory

    def error(self) -> MemoryBusy:
        """MemoryBusy naming every model that holds memory, with its state, pin and size."""
        names = ", ".join(f"{p.id!r} ({p.state.value}{', pinned' if p.pinned else ''}, {p.memory_gb:g} GB)"
                          for p in self.holders)
        return MemoryBusy(
            f"model {self.model!r} needs {self.need_gb:g} GB but host {self.host!r} has {self.free_gb:g} of "
            f"{self.budget_gb:g} GB free and nothing can be unloaded: {names or 'no other model holds memory'}"
        )


Decision = Fits | AwaitStops | Evict | Release | WaitForBusy | Impossible


def used_gb(peers: Sequence[Peer]) -> float:
    """The GB that these models hold (those starting, ready or stopping)."""
    return sum(p.memory_gb for p in peers if p.state in HOLDS_MEMORY)


def plan(candidate: Candidate, peers: Sequence[Peer]) -> Decision:
    """The next step towards fitting `candidate` beside `peers` (the other managed models on its host)."""
    budget, need = candidate.budget_gb, candidate.need_gb
    if budget is None or used_gb(peers) + need <= budget:
        return Fits()
    if stopping := [p.id for p in peers if p.stopping]:
        return AwaitStops(tuple(stopping))
    ready = sorted((p for p in peers if p.state == State.READY and not p.pinned), key=lambda p: p.last_used)
    if idle := [p for p in ready if p.in_flight == 0 and not p.protected]:
        chosen: list[str] = []
        for p in idle:
            chosen.append(p.id)
            if used_gb([q for q in peers if q.id not in chosen]) + need <= budget:
                break
        return Evict(tuple(chosen))
    if failed := [p for p in peers if p.failed_with_handle]:
        return Release(failed[0].id)
    starting = tuple(p for p in peers if p.state == State.STARTING and not p.pinned)
    movable = sum(p.memory_gb for p in (*ready, *starting))
    if not (ready or starting) or used_gb(peers) - movable + need > budget:
        holders = tuple(p for p in peers if p.state in HOLDS_MEMORY)
        return Impossible(candidate.id, need, candidate.host, budget, budget - used_gb(peers), holders)
    return WaitForBusy(candidate.id, need, candidate.host, budget, tuple(ready), starting)


@dataclass(frozen=True)
class HostView:
    """One of a model's hosts, as `place` sees it."""

    name: str
    budget_gb: float | None
    peers: tuple[Peer, ...]  # the other managed models placed there
    holds: bool = False  # it holds the model's image already: a start there downloads nothing
    reachable: bool = True


def place(model: str, need_gb: float, hosts: Sequence[HostView]) -> str:
    """The host a cold start of `model` goes to (see the module's docstring)."""
    live = [h for h in hosts if h.reachable] or list(hosts)
    decisions = {h.name: plan(Candidate(model, need_gb, h.name, h.budget_gb), h.peers) for h in live}

    def load(h: HostView) -> int:
        return sum(p.in_flight + p.queued for p in h.peers)

    def last_used(h: HostView) -> float:
        return max((p.last_used for p in h.peers if p.state == State.READY), default=0.0)

    if fits := [h for h in live if isinstance(decisions[h.name], Fits)]:
        return min(fits, key=lambda h: (not h.holds, load(h))).name
    def waits(h: HostView) -> bool:  # room is made only once busy or starting models are done
        freed = sum(p.memory_gb for p in h.peers if p.stopping or p.failed_with_handle
                    or (p.state == State.READY and not p.pinned and p.in_flight == 0))
        return used_gb(h.peers) - freed + need_gb > (h.budget_gb or 0)

    if room := [h for h in live if not isinstance(decisions[h.name], Impossible)]:
        return min(room, key=lambda h: (waits(h), load(h), not h.holds, last_used(h))).name
    return live[0].name
