"""Slot: one registered model and what the manager knows about it (hub/manager/core.py orchestrates them)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from hub.config import HubSettings, Limits, ModelConfig
from hub.engines.base import Engine, LaunchSpec
from hub.manager.queue import Waiter
from hub.manager.states import Observer, Phase, State
from hub.runtimes import Handle


@dataclass(eq=False)
class Slot:
    """One registered model and everything the manager knows about it."""

    id: str
    cfg: ModelConfig
    engine: Engine
    limits: Limits = field(default_factory=lambda: Limits.of(HubSettings()))  # the registry's: Registry.limits_of
    state: State = State.STOPPED
    reason: str | None = None
    phase: Phase = Phase.NONE  # what its tasks do within its state (states.py): waiting, waking, falling asleep
    host: str = ""  # where it runs, or ran last (one of cfg.hosts; placement picks it at each cold start)
    handle: Handle | None = None
    spec: LaunchSpec | None = None
    in_flight: int = 0
    queue: deque[Waiter] = field(default_factory=deque)  # requests waiting for it, oldest first (queue.py)
    last_used: float = 0.0  # time.time() of the last request's end (or of becoming ready)
    last_admit: float = 0.0  # time.monotonic() of the last lease granted
    service_s: float | None = None  # mean seconds a request holds it (Retry-After estimates)
    starts: int = 0
    sleeps: int = 0  # times it was put to sleep
    wakes: int = 0  # times it was woken (a start from sleeping)
    # counters for metrics: leases granted; requests refused (429), timed out in the queue, gone from it
    admitted: int = 0
    rejected: int = 0
    timed_out: int = 0
    abandoned: int = 0
    start_task: asyncio.Task | None = None
    stop_task: asyncio.Task | None = None
    watch_task: asyncio.Task | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float | None = None
    ready_at: float | None = None
    ready_since: float | None = None  # time.monotonic() of becoming ready (min_residency)
    blocked_on: frozenset[str] = frozenset()  # in phase waiting: the models whose memory its start waits for
    blocked_since: float | None = None  # in phase waiting: time.monotonic() since when its start waits
    loading: int = 0  # admin loads waiting for its start (they keep a start going that no request waits for)
    observer: Observer | None = None  # told of each of its moves (hub/metrics.py)

    def __post_init__(self) -> None:
        self.idle.set()
        self.host = self.host or self.cfg.hosts[0]
        if not self.engine.managed:  # the initial state, not a move: an unmanaged engine is ready and stays so
            self.state = State.READY

    def block(self, on: frozenset[str]) -> None:
        """Its start waits for memory that the models `on` hold (phase waiting, since now unless it waited
        already); they are contended from now on."""
        if self.phase is not Phase.WAITING:
            self.phase, self.blocked_since = Phase.WAITING, time.monotonic()
        self.blocked_on = on

    def unblock(self) -> None:
        """Its start no longer waits for memory."""
        if self.phase is Phase.WAITING:
            self.phase = Phase.NONE
        self.blocked_on, self.blocked_since = frozenset(), None

    def waiting_since(self) -> float | None:
        """Since when (time.monotonic) it has waited for memory: its oldest request's arrival, or its start's
        wait when no request waits (a load); None when its start does not wait."""
        if self.phase is not Phase.WAITING:
            return None
        since = self.blocked_since or time.monotonic()
        return min(self.queue[0].arrival, since) if self.queue else since

    @property
    def queued(self) -> int:
        """Requests waiting for it."""
        return len(self.queue)

    @property
    def waking(self) -> bool:
        """Whether its start wakes it (phase waking; the observer tells a wake's ready from a start's by it)."""
        return self.phase is Phase.WAKING

    @property
    def managed(self) -> bool:
        """Whether the hub starts and stops this model's engine (an `openai` upstream it does not)."""
        return self.engine.managed
