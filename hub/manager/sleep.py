"""Sleep tiers: a model with `sleep = true` whose engine can sleep is put to sleep instead of stopped when it is
evicted or its idle ttl expires; its next request (or load) wakes it.

Rules:
- Asleep, the engine keeps its process and frees its GPU memory: a sleeping model does not count against its host's
  memory budget (states.HOLDS_MEMORY) but against its host's sleep budget (RAM: `[hub] sleep_budget_gb`,
  `[hosts.x] sleep_budget_gb`; unset, no limit), at its `sleep_memory_gb` (unset: the engine's estimate).
- Putting a model to sleep first stops the least recently used sleepers of its host until it fits that budget; a
  model larger than the whole budget is stopped instead. The decision, and the stops it begins, happen without a
  pause, so two models falling asleep at once never overfill the budget.
- While it falls asleep (phase falling asleep) the model is still ready, takes no new request (dispatch.py
  `may_serve`) and still holds its memory; the planner waits for it as for a stop in progress. An engine that fails
  to sleep is stopped instead.
- Waking is a start (core.py `_start`): the model's single start task makes room in the budget, moves it from
  sleeping to starting (phase waking), asks the engine to wake (`Sleeper.wake`) and polls `ready`; its waiting
  requests are served once it is ready.
- Unload, shutdown and the sleep budget stop sleepers; a sleeper whose engine exits becomes failed (core.py _watch).

The manager holds a `Sleeper` (SleepTiers): a collaborator that sees the slots and is given the manager's stop and
pump, so that it imports nothing of core.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import httpx

from hub.config import Registry
from hub.manager.slot import Slot
from hub.manager.states import Phase, State, move

log = logging.getLogger("hub.manager")


class Sleeper(Protocol):
    """What the manager asks of sleep (SleepTiers is the one it holds)."""

    def begin(self, s: Slot, why: str) -> asyncio.Task | None:
        """Begin putting an idle ready model to sleep, or return its sleep in progress: the task that ends once its
        memory is free. None when it may not sleep (the manager stops it instead)."""
        ...

    def pending(self, s: Slot) -> asyncio.Task | None:
        """The task putting s to sleep, while it runs."""
        ...

    async def wake(self, s: Slot) -> None:
        """Ask a sleeping (now starting) model's engine to wake; raises what the engine raised."""
        ...

    def used_gb(self, host: str) -> float:
        """RAM in GB held on a host by its sleeping models (and those falling asleep)."""
        ...


class SleepTiers:
    """Puts models to sleep within their host's sleep budget and wakes them. `stop` begins a model's stop (the
    manager's: the task, or None when there is nothing to stop); `pump` lets the queues look again."""

    def __init__(self, registry: Registry, slots: dict[str, Slot], http: httpx.AsyncClient,
                 stop: Callable[[Slot, str], asyncio.Task | None], pump: Callable[[], None]) -> None:
        self.registry, self.slots, self._http = registry, slots, http
        self._stop, self._pump = stop, pump
        self._tasks: dict[str, asyncio.Task] = {}  # models falling asleep: the task that puts each to sleep

    def memory_of(self, s: Slot) -> float:
        """The RAM in GB a model holds asleep."""
        own = s.cfg.sleep_memory_gb
        return own if own is not None else s.engine.sleep_memory_gb(s.cfg)

    def sleepers(self, host: str) -> list[Slot]:
        """A host's sleeping models and those falling asleep."""
        return [o for o in self.slots.values()
                if o.host == host and (o.state == State.SLEEPING or o.phase is Phase.FALLING_ASLEEP)]

    def used_gb(self, host: str) -> float:
        return sum(self.memory_of(o) for o in self.sleepers(host))

    def pending(self, s: Slot) -> asyncio.Task | None:
        return self._tasks.get(s.id)

    async def wake(self, s: Slot) -> None:
        await s.engine.wake(self._http, s.handle.base_url, s.cfg, self.registry.hub.start_timeout)  # type: ignore[union-attr]

    def begin(self, s: Slot, why: str) -> asyncio.Task | None:
        """Sleep in progress, or a new one: see Sleeper.begin. A new one first begins the stops of the least recently
        used sleepers its RAM needs; none when sleep is off, the engine cannot sleep, the model is busy, or it needs
        more than the sleep budget."""
        if task := self._tasks.get(s.id):
            return task
        if not (s.cfg.sleep and s.managed and s.engine.can_sleep(s.cfg)) or s.state != State.READY \
                or s.in_flight or s.handle is None or s.stop_task or s.phase is Phase.DRAINING:
            return None
        need, budget = self.memory_of(s), self.registry.sleep_budget_of(s.host)
        if budget is not None and need > budget:
            log.info("%s: needs %g GB asleep, more than host %s's sleep budget (%g GB): stopped instead",
                     s.id, need, s.host, budget)
            return None
        stops: list[asyncio.Task] = []
        if budget is not None:
            for o in sorted((o for o in self.sleepers(s.host) if o.state == State.SLEEPING), key=lambda o: o.last_used):
                if self.used_gb(s.host) + need <= budget:
                    break
                if task := self._stop(o, f"stopped to make room in host {s.host!r}'s sleep budget for {s.id!r}"):
                    stops.append(task)
        handle = s.handle
        timeout = self.registry.hub.start_timeout

        async def run() -> None:
            err: Exception | None = None
            try:
                await asyncio.gather(*(asyncio.shield(t) for t in stops), return_exceptions=True)
                await s.engine.sleep(self._http, handle.base_url, s.cfg, timeout)
            except Exception as e:  # an engine that cannot sleep now is stopped instead
                err = e
            finally:
                self._tasks.pop(s.id, None)
                if s.phase is Phase.FALLING_ASLEEP:
                    s.phase = Phase.NONE
            if s.state == State.READY and s.handle is handle:
                if err is None:
                    move(s, State.SLEEPING, why)
                    s.sleeps += 1
                    log.info("%s asleep: %s", s.id, why)
                elif task := self._stop(s, f"{why}; it could not sleep ({err!r})"):
                    log.warning("%s: could not sleep (%r): stopping it", s.id, err)
                    await asyncio.shield(task)
            self._pump()

        s.phase = Phase.FALLING_ASLEEP
        self._tasks[s.id] = asyncio.create_task(run(), name=f"sleep-{s.id}")
        return self._tasks[s.id]
