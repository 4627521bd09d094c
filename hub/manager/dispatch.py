"""Dispatch across models: the pump (which waiting request is served now, which model must start) and contention
(which models' memory other models' starts wait for), the run rule's view of every model. The rules are in
queue.py's docstring; each model's queue (queue.ModelQueue) asks the Dispatcher through queue.Dispatch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hub.downloads.status import describe_download
from hub.errors import ModelUnavailable
from hub.manager.queue import admits
from hub.manager.slot import Slot
from hub.manager.states import Phase, State

HELD = frozenset({Phase.FALLING_ASLEEP, Phase.DRAINING})  # a ready model in these phases takes no new request


class Dispatcher:
    """The pump and the run rule over the manager's slots. `start` begins a model's single start task (the
    manager's); once closed (the hub shuts down) nothing is granted or started any more."""

    def __init__(self, slots: dict[str, Slot], start: Callable[[Slot], object]) -> None:
        self.slots, self._start = slots, start
        self.closed = False

    def close(self, why: str) -> None:
        """Grant and start nothing any more; every waiting request gets ModelUnavailable saying why."""
        self.closed = True
        for s in self.slots.values():
            s.queue.fail(ModelUnavailable(f"model {s.id!r} cannot serve: {why}"))

    def contenders(self, s: Slot) -> list[str]:
        """The models whose starts wait for s's memory."""
        return [o.id for o in self.slots.values() if s.id in o.blocked_on]

    def contended_since(self, s: Slot) -> float | None:
        """When the oldest wait for s's memory began (time.monotonic), or None."""
        times = [o.waiting_since() for o in self.slots.values() if s.id in o.blocked_on]
        return min((t for t in times if t is not None), default=None)

    def may_serve(self, model: str, arrival: float, now: float, background: bool = False) -> bool:
        """Whether a model serves a request that arrived at `arrival` now: ready, a free place, the run rule;
        `background` work (batch lines) not at all while it is contended."""
        s = self.slots[model]
        if s.state != State.READY or (s.managed and s.handle is None) or s.phase in HELD:
            return False
        if s.limits.max_concurrency and s.in_flight >= s.limits.max_concurrency:
            return False
        contended_since = self.contended_since(s)
        if background:
            return contended_since is None
        return admits(arrival, now, contended_since, s.ready_since, s.limits)

    def why_waiting(self, model: str, ahead: int) -> str:
        """What a request waiting for a model (`ahead` requests before it) waits for, in words."""
        s = self.slots[model]
        if s.state == State.DOWNLOADING and s.download:
            return f"it is downloading: {describe_download(s.download.to_json())}"
        if s.state == State.STARTING:
            return "it is still waking" if s.phase is Phase.WAKING else "it is still starting"
        if s.phase is Phase.FALLING_ASLEEP:
            return "it is falling asleep (it wakes once asleep)"
        if s.phase is Phase.DRAINING:
            return "it restarts with its new config after a registry reload"
        if s.phase is Phase.WAITING:
            return f"it waits for memory held by {', '.join(map(repr, sorted(s.blocked_on)))}"
        if s.state == State.READY and (others := self.contenders(s)):
            return f"it yields to {', '.join(map(repr, others))}, whose requests wait for its memory"
        return f"{s.in_flight} request(s) in flight and {ahead} ahead of it in the queue"

    def pump(self) -> None:
        """Grant leases to waiting requests in queue order, and start models that have waiters but no engine."""
        if self.closed:
            return
        now = time.monotonic()
        for s in self.slots.values():
            q = s.queue
            if not q.waiting and not q.background:  # most models, on every enqueue and release: two reads each
                continue
            q.drop_forfeited()
            if not q.waiting and not q.background:
                continue
            if s.state == State.READY:
                s.queue.serve(self, now)
            elif (s.managed and s.start_task is None and s.state in (State.STOPPED, State.FAILED, State.SLEEPING)
                  and s.phase is not Phase.DRAINING):
                self._start(s)
