"""Slot: one registered model and what the manager knows about it (hub/manager/core.py orchestrates them): its
state and phase (states.py), where and how its engine runs, its tasks, and its queue (queue.ModelQueue), which it
composes: one per model."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from hub.config import HubSettings, Limits, ModelConfig
from hub.downloads.status import Job
from hub.engines.base import Engine, LaunchSpec, Upstream
from hub.manager.queue import ModelQueue
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
    queue: ModelQueue = field(init=False)  # its requests: waiting (len), in flight, their counters
    starts: int = 0
    sleeps: int = 0  # times it was put to sleep
    wakes: int = 0  # times it was woken (a start from sleeping)
    start_task: asyncio.Task | None = None
    stop_task: asyncio.Task | None = None
    watch_task: asyncio.Task | None = None
    started_at: float | None = None
    ready_at: float | None = None
    ready_since: float | None = None  # time.monotonic() of becoming ready (min_residency)
    blocked_on: frozenset[str] = frozenset()  # in phase waiting: the models whose memory its start waits for
    blocked_since: float | None = None  # in phase waiting: time.monotonic() since when its start waits
    observer: Observer | None = None  # told of each of its moves (hub/metrics.py)
    runtime_name: str = "process"  # the runtime its engine runs (or will run) under: the registry's at its config
    removed: bool = False  # removed from the registry by a reload: no new request, gone once drained (reload.py)
    download: Job | None = None  # in state downloading: the pull its start waits for (hub/downloads/)
    offline_env: dict[str, str] = field(default_factory=dict)  # its engine's environment once its source is pulled

    def __post_init__(self) -> None:
        self.queue = ModelQueue(self)
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
        return min(self.queue.waiting[0].arrival, since) if self.queue else since

    def upstream(self) -> Upstream:
        """Where a lease on it sends the request: its running engine, or an unmanaged engine's upstream."""
        return self.engine.upstream(self.cfg) if not self.managed else Upstream(self.handle.base_url)  # type: ignore[union-attr]

    @property
    def queued(self) -> int:
        """Requests waiting for it."""
        return len(self.queue)

    @property
    def in_flight(self) -> int:
        """Requests it serves now."""
        return self.queue.in_flight

    @property
    def last_used(self) -> float:
        """time.time() of its last request's end, or of its becoming ready (least recently used first)."""
        return self.queue.last_used

    @property
    def waking(self) -> bool:
        """Whether its start wakes it (phase waking; the observer tells a wake's ready from a start's by it)."""
        return self.phase is Phase.WAKING

    @property
    def managed(self) -> bool:
        """Whether the hub starts and stops this model's engine (an `openai` upstream it does not)."""
        return self.engine.managed
