"""Sleep tiers: a model with `sleep = true` whose engine can sleep is put to sleep instead of stopped when it is
evicted or its idle ttl expires; its next request (or load) wakes it.

Rules:
- Asleep, the engine keeps its process and frees its GPU memory: a sleeping model does not count against its host's
  memory budget (states.HOLDS_MEMORY) but against its host's sleep budget (RAM: `[hub] sleep_budget_gb`,
  `[hosts.x] sleep_budget_gb`; unset, no limit), at its `sleep_memory_gb` (unset: the engine's estimate).
- Putting a model to sleep first stops the least recently used sleepers of its host until it fits that budget; a
  model larger than the whole budget is stopped instead. The decision, and the stops it begins, happen without a
  pause, so two models falling asleep at once never overfill the budget.
- While it falls asleep (`sleep_task`) the model is still ready, takes no new request (queue.py `_may_serve`) and
  still holds its memory; the planner waits for it as for a stop in progress. An engine that fails to sleep is
  stopped instead.
- Waking is a start (core.py `_start`): the model's single start task makes room in the budget, moves it from
  sleeping to starting, asks the engine to wake and polls `ready`; its waiting requests are served once it is ready.
- Unload, shutdown and the sleep budget stop sleepers; a sleeper whose engine exits becomes failed (core.py _watch).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from hub.config import Registry
from hub.manager.states import Phase, State, move

if TYPE_CHECKING:
    import httpx

    from hub.manager.slot import Slot

log = logging.getLogger("hub.manager")


class Sleep:
    """The sleep half of the Manager (hub/manager/core.py): putting models to sleep within the sleep budget."""

    slots: dict[str, Slot]
    registry: Registry
    _http: httpx.AsyncClient

    def _begin_stop(self, s: Slot, why: str) -> asyncio.Task | None:  # pragma: no cover - the Manager's
        raise NotImplementedError

    def _pump(self) -> None:  # pragma: no cover - the Manager's
        raise NotImplementedError

    def sleep_memory_of(self, s: Slot) -> float:
        """The RAM in GB a model holds asleep."""
        own = s.cfg.sleep_memory_gb
        return own if own is not None else s.engine.sleep_memory_gb(s.cfg)

    def sleepers(self, host: str) -> list[Slot]:
        """A host's sleeping models and those falling asleep."""
        return [o for o in self.slots.values()
                if o.host == host and (o.state == State.SLEEPING or o.phase is Phase.FALLING_ASLEEP)]

    def sleep_used_gb(self, host: str) -> float:
        """RAM in GB held on a host by its sleeping models (and those falling asleep)."""
        return sum(self.sleep_memory_of(o) for o in self.sleepers(host))

    def _evict(self, s: Slot, why: str) -> asyncio.Task | None:
        """Take an idle ready model out of the budget: put it to sleep where it may, else stop it. Returns the task
        that finishes once its memory is free (None: nothing to do)."""
        if s.sleep_task:
            return s.sleep_task
        return self._begin_sleep(s, why) or self._begin_stop(s, why)

    def _begin_sleep(self, s: Slot, why: str) -> asyncio.Task | None:
        """Begin putting a ready, idle model to sleep, stopping the least recently used sleepers its RAM needs; None
        when it may not sleep (sleep off, an engine that cannot, a busy model, or more than the sleep budget)."""
        if not (s.cfg.sleep and s.managed and s.engine.can_sleep(s.cfg)) or s.state != State.READY \
                or s.in_flight or s.handle is None or s.stop_task:
            return None
        need, budget = self.sleep_memory_of(s), self.registry.sleep_budget_of(s.host)
        if budget is not None and need > budget:
            log.info("%s: needs %g GB asleep, more than host %s's sleep budget (%g GB): stopped instead",
                     s.id, need, s.host, budget)
            return None
        stops: list[asyncio.Task] = []
        if budget is not None:
            for o in sorted((o for o in self.sleepers(s.host) if o.state == State.SLEEPING), key=lambda o: o.last_used):
                if self.sleep_used_gb(s.host) + need <= budget:
                    break
                if task := self._begin_stop(o, f"stopped to make room in host {s.host!r}'s sleep budget "
                                               f"for {s.id!r}"):
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
                s.sleep_task = None
                if s.phase is Phase.FALLING_ASLEEP:
                    s.phase = Phase.NONE
            if s.state == State.READY and s.handle is handle:
                if err is None:
                    move(s, State.SLEEPING, why)
                    s.sleeps += 1
                    log.info("%s asleep: %s", s.id, why)
                elif task := self._begin_stop(s, f"{why}; it could not sleep ({err!r})"):
                    log.warning("%s: could not sleep (%r): stopping it", s.id, err)
                    await asyncio.shield(task)
            self._pump()

        s.phase = Phase.FALLING_ASLEEP
        s.sleep_task = asyncio.create_task(run(), name=f"sleep-{s.id}")
        return s.sleep_task
