"""Registry reload without a restart: what changes how when the hub takes a new registry while it serves.

`Reloads.apply` (Manager.reload) takes a registry that was loaded and checked in full already (hub/registry.py: a
broken file never gets here) and compares it, under a lock (two reloads never mix), with what each model runs now:

- added: a new Slot, available at once.
- updated: only keys that the hub itself reads changed (LIVE_FIELDS: ttl, the scheduling limits and timeouts,
  description, tasks, pinned, memory_gb, sleep_memory_gb): the slot's cfg and Limits are replaced, which its queue,
  the dispatcher, the gateway and the budget read per request. A model without an engine (stopped, failed) takes
  any change this way: its next start launches the new config.
- stale, restarting: a key its engine was started with changed: every key not in LIVE_FIELDS (source, engine, args,
  env, host, runtime, image, gpus, type, sleep, and any key added later, so a new key is safe by default), its
  runtime through [hub] runtime, or the [hosts] table of the host it runs on. Its engine keeps serving, and restarts
  once idle (nothing in flight, nothing waiting: stale). With `restart` it drains at once (restarting): it takes no
  new request, its requests in flight finish (at most drain_timeout), its waiting requests wait for the new engine.
  A start under way finishes first. A ready engine is started again with the new config; a sleeping one is stopped
  (its next request starts the new config). The slot keeps the old config until its engine has stopped.
- removed, removing: it takes no new request at once (404, and /v1/models leaves it out); its requests in flight
  finish (a ready model serves those that wait too) within drain_timeout, then its engine is stopped anyway and the
  slot is gone. A model added back while it drains stays, and its drain is called off.

[hub] keys in LIVE_HUB apply at once: the manager, its sleeper and whoever `listen`s (the batches, the gateway's body
limits, the web app's notes) get the new registry. The other [hub] keys (host, port, state_dir, api_key_env, the HTTP
server's header limits, the engine connection pool's keys) are read once when `hub serve` starts: they are reported
as needing its restart, and the running values are kept. A [hosts] table that changed makes its running models
stale (above); its runtime (a Docker client) is made again once none of its engines runs.

Each change is logged (one INFO line per model) and, while it is pending, `pending(slot)` says it in words (GET
/hub/models: "restarts when idle (changed: args)", "restarting after reload", "removing: draining 2 request(s)").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from hub.config import HostConfig, Limits, ModelConfig, Registry
from hub.engines import get_engine
from hub.errors import ModelNotFound, ModelUnavailable
from hub.manager.slot import Slot
from hub.manager.states import Phase, State
from hub.runtimes import Runtime

log = logging.getLogger("hub.manager")
POLL_S = 0.2  # how often a pending restart or removal looks whether its model is idle

LIVE_FIELDS = frozenset({
    "ttl", "pinned", "description", "tasks", "memory_gb", "sleep_memory_gb", "max_concurrency", "max_queue",
    "max_wait", "max_run", "min_residency", "answer_timeout", "stream_idle_timeout", "fit_max_tokens",
})
"""A model's keys that the hub reads and its engine never sees: applied live. Every other key is an engine change."""

LIVE_HUB = frozenset({
    "memory_budget_gb", "sleep_budget_gb", "idle_ttl", "start_timeout", "drain_timeout", "stop_timeout", "runtime",
    "keep_running", "max_body_mb", "max_upload_mb", "max_json_depth", "max_concurrency", "max_queue", "max_wait",
    "max_run", "min_residency", "answer_timeout", "stream_idle_timeout", "max_batch_lines", "max_batch_file_mb",
    "batch_concurrency", "batch_idle_window", "fit_max_tokens",
})
"""The [hub] keys a reload applies (runtime: through the models it moves). Every other key needs `hub serve` to
restart."""

ChangeKind = Literal["added", "updated", "stale", "restarting", "removed", "removing"]


class Change(BaseModel):
    """What a reload did (or left pending) to one model."""

    model: str
    change: ChangeKind
    fields: list[str] = []
    detail: str = ""


class ReloadReport(BaseModel):
    """What a reload changed: per model, and the [hub] keys and [hosts] tables that changed."""

    changes: list[Change] = []
    hub: list[str] = []  # [hub] keys applied
    needs_restart: list[str] = []  # [hub] keys that changed but need a restart of `hub serve`: not applied
    hosts: list[str] = []  # [hosts] tables that changed

    def lines(self) -> list[str]:
        """The report in words, one line per change (the CLI prints them)."""
        out = [f"{c.model}: {c.change}" + (f" ({', '.join(c.fields)})" if c.fields else "")
               + (f": {c.detail}" if c.detail else "") for c in self.changes]
        return [*out, *self.table_lines()] or ["no change"]

    def table_lines(self) -> list[str]:
        """The [hub] and [hosts] part of the report in words."""
        out = []
        if self.hub:
            out.append(f"[hub]: applied {', '.join(self.hub)}")
        if self.needs_restart:
            out.append(f"[hub]: {', '.join(self.needs_restart)} changed: needs a restart of `hub serve` (not applied)")
        if self.hosts:
            out.append(f"[hosts]: {', '.join(self.hosts)} changed: their running models restart")
        return out


@dataclass(eq=False)
class Pending:
    """A restart a reload left pending on a model: the config it restarts with, and whether it drains at once."""

    cfg: ModelConfig
    runtime_name: str
    fields: list[str]
    now: bool
    task: asyncio.Task | None = field(default=None, repr=False)
    stopping: bool = False  # its engine's stop has begun: it can no longer be called off


def changed(a: BaseModel, b: BaseModel) -> list[str]:
    """The keys whose values differ between two tables of the same shape."""
    return [k for k in type(b).model_fields if getattr(a, k) != getattr(b, k)]


def runs(s: Slot) -> bool:
    """Whether the model has an engine, or one on the way or going: a config change must wait for it."""
    return s.managed and (s.handle is not None or s.start_task is not None or s.stop_task is not None
                          or s.state in (State.STARTING, State.READY, State.SLEEPING, State.STOPPING))


def _host(reg: Registry, name: str) -> HostConfig | None:
    try:
        return reg.host_config(name)
    except KeyError:
        return None


class Reloads:
    """Applies new registries to the manager's slots (`apply`) and carries out what each leaves pending: restarts
    and removals, one task per model. `make_slot`, `start`, `stop` and `pump` are the manager's; `runtimes` its
    runtime per (runtime name, host), from which a changed host's is dropped once unused."""

    def __init__(self, slots: dict[str, Slot], make_slot: Callable[[str, ModelConfig], Slot],
                 runtimes: dict[tuple[str, str], Runtime], start: Callable[[Slot], asyncio.Task],
                 stop: Callable[[Slot, str], asyncio.Task | None], pump: Callable[[], None]) -> None:
        self.slots, self._make_slot, self._runtimes = slots, make_slot, runtimes
        self._start, self._stop, self._pump = start, stop, pump
        self._lock = asyncio.Lock()
        self._pending: dict[str, Pending] = {}
        self._removing: dict[str, asyncio.Task] = {}
        self._retiring: set[tuple[str, str]] = set()
        self._closing: set[asyncio.Task] = set()
        self._registry: Registry | None = None
        self.listeners: list[Callable[[Registry], None]] = []

    def listen(self, fn: Callable[[Registry], None]) -> None:
        """Call fn(registry) with every registry a reload applies (those outside the manager that hold one)."""
        self.listeners.append(fn)

    def pending(self, s: Slot) -> str | None:
        """What a reload left to do on a model, in words (None: nothing)."""
        if s.removed:
            n = s.in_flight + s.queued
            return f"removing: draining {n} request(s)" if n else "removing: stopping"
        if (p := self._pending.get(s.id)) is None:
            return None
        if p.now or p.stopping:
            return "restarting after reload"
        return f"restarts when idle (changed: {', '.join(p.fields)})"

    def close(self) -> None:
        """Cancel the pending restarts and removals (the hub is shutting down: it stops every engine itself)."""
        for task in [*(p.task for p in self._pending.values()), *self._removing.values()]:
            if task:
                task.cancel()

    # ---- a reload ----

    async def apply(self, old: Registry, new: Registry, restart: bool,
                    use: Callable[[Registry], None]) -> ReloadReport:
        """Compare `new` with what runs (under `old`), hand the manager the registry it keeps (`use`), and change
        the slots as the module's docstring says; the report lists every change."""
        async with self._lock:
            report = ReloadReport()
            hub_keys = changed(old.hub, new.hub)
            report.hub = [k for k in hub_keys if k in LIVE_HUB]
            report.needs_restart = [k for k in hub_keys if k not in LIVE_HUB]
            if report.needs_restart:  # the running values stay until `hub serve` restarts
                kept = {k: getattr(old.hub, k) for k in report.needs_restart}
                new = new.model_copy(update={"hub": new.hub.model_copy(update=kept)})
            report.hosts = [h for h in dict.fromkeys([*old.hosts, *new.hosts, "local"])
                            if _host(old, h) != _host(new, h)]
            use(new)
            self._registry = new
            for s in [s for mid, s in self.slots.items() if mid not in new.models and not s.removed]:
                report.changes.append(self._remove(s))
            for mid, cfg in new.models.items():
                if change := self._update(mid, cfg, new, set(report.hosts), restart):
                    report.changes.append(change)
            for s in self.slots.values():
                if not s.removed:  # [hub]'s limits reach every model that has none of its own
                    s.limits = Limits.of(new.hub, s.cfg)
            self._retiring.update(k for k in self._runtimes if k[1] in report.hosts and k[0] != "process")
            self._retire()
            for fn in self.listeners:
                fn(new)
            for line in report.lines():
                log.info("reload: %s", line)
            self._pump()
            return report

    def _update(self, mid: str, cfg: ModelConfig, reg: Registry, hosts: set[str], restart: bool) -> Change | None:
        """Add a model, or compare a model's new table with what it runs and apply or schedule the difference."""
        s = self.slots.get(mid)
        if s is not None and s.removed:  # added back while it drains: it stays
            if task := self._removing.pop(mid, None):
                task.cancel()
            s.removed = False
            if s.phase is Phase.DRAINING:
                s.phase = Phase.NONE
        if s is None:
            self.slots[mid] = self._make_slot(mid, cfg)
            return Change(model=mid, change="added", detail="available now")
        runtime = reg.runtime_of(mid)
        diff = changed(s.cfg, cfg)
        live = [f for f in diff if f in LIVE_FIELDS]
        engine = [f for f in diff if f not in LIVE_FIELDS]
        if runtime != s.runtime_name and "runtime" not in engine:
            engine.append("runtime")
        if runs(s) and s.host in hosts:
            engine.append(f"hosts.{s.host}")
        p = self._pending.get(mid)
        if engine and runs(s):
            s.cfg = s.cfg.model_copy(update={f: getattr(cfg, f) for f in LIVE_FIELDS})
            if p is None:
                p = self._pending[mid] = Pending(cfg, runtime, engine, restart)
                p.task = asyncio.create_task(self._restart(s, p), name=f"reload-restart-{mid}")
            else:
                p.cfg, p.runtime_name, p.fields, p.now = cfg, runtime, engine, p.now or restart
            if p.now and s.state in (State.READY, State.STARTING) and s.phase is Phase.NONE:
                s.phase = Phase.DRAINING  # from now on: no new request, its waiting ones wait for the new engine
            idle = s.in_flight == 0 and not s.queue.awaited and s.start_task is None
            kind: ChangeKind = "restarting" if p.now or p.stopping or idle else "stale"
            detail = "drains, then restarts" if kind == "restarting" else \
                f"restarts when idle ({s.in_flight} in flight, {s.queued} waiting)"
            return Change(model=mid, change=kind, fields=[*engine, *live], detail=detail)
        detail = ""
        if p is not None:
            if p.stopping:  # too late to call it off: it restarts with this config
                p.cfg, p.runtime_name, p.fields = cfg, runtime, engine or p.fields
                return Change(model=mid, change="restarting", fields=[*engine, *live], detail="its engine is stopping")
            if p.task:
                p.task.cancel()
            del self._pending[mid]
            if s.phase is Phase.DRAINING:
                s.phase = Phase.NONE
            detail = "its pending restart is called off"
        if not diff and runtime == s.runtime_name and not detail:
            return None
        if runs(s):
            s.cfg = cfg
            detail = detail or "applied live"
        else:
            self._take(s, cfg, runtime)
            detail = detail or ("not running: its next start uses the new config" if engine else "applied")
        return Change(model=mid, change="updated", fields=[*engine, *live], detail=detail)

    def _take(self, s: Slot, cfg: ModelConfig, runtime: str) -> None:
        """A model without an engine takes its new config (a new slot where it moves to or from a hub-managed
        engine: the states differ)."""
        engine = s.engine if cfg.engine == s.cfg.engine else get_engine(cfg.engine)
        if engine.managed != s.managed:
            s.queue.fail(ModelUnavailable(f"model {s.id!r} moved to engine {cfg.engine!r} in a registry reload: "
                                          "send the request again"))
            if self.slots.get(s.id) is s:
                self.slots[s.id] = self._make_slot(s.id, cfg)
            return
        s.cfg, s.engine, s.runtime_name = cfg, engine, runtime
        if self._registry is not None:
            s.limits = Limits.of(self._registry.hub, cfg)
        if s.host not in cfg.hosts:
            s.host = cfg.hosts[0]

    # ---- what a reload leaves pending ----

    async def _restart(self, s: Slot, p: Pending) -> None:
        """Restart a model's engine with p.cfg once it is idle (p.now: drain it at once, within drain_timeout)."""
        deadline: float | None = None
        relaunch = False
        try:
            while True:
                if p.now and s.state == State.STARTING and s.phase is Phase.NONE:
                    s.phase = Phase.DRAINING  # once ready it serves nothing: its waiters wait for the new engine
                if s.start_task or s.stop_task:  # a start finishes first; a stop in progress is ours to wait for
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.shield(s.start_task or s.stop_task)  # type: ignore[arg-type]
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise asyncio.CancelledError
                    continue
                if not runs(s):
                    break
                if p.now and deadline is None:
                    deadline = time.monotonic() + self._drain_timeout()
                if p.now and s.state == State.READY and s.phase is Phase.NONE:
                    s.phase = Phase.DRAINING  # no new request: its waiting ones wait for the new engine
                idle = s.in_flight == 0 and (p.now or not s.queue.awaited)
                late = deadline is not None and time.monotonic() >= deadline
                if (idle or late) and s.phase in (Phase.NONE, Phase.DRAINING):
                    relaunch = relaunch or s.state == State.READY
                    s.phase, p.stopping = Phase.DRAINING, True  # held: granted nothing, started not, until it is new
                    why = f"restarting after a registry reload (changed: {', '.join(p.fields)})"
                    if late and s.in_flight:
                        log.warning("%s: %d request(s) still in flight after drain_timeout: restarting anyway",
                                    s.id, s.in_flight)
                    if task := self._stop(s, why):
                        await asyncio.shield(task)
                    continue
                await asyncio.sleep(POLL_S)
        except asyncio.CancelledError:
            if self._pending.get(s.id) is p and not p.stopping and s.phase is Phase.DRAINING:
                s.phase = Phase.NONE
            raise
        if self._pending.get(s.id) is p:
            del self._pending[s.id]
        self._take(s, p.cfg, p.runtime_name)
        if s.phase is Phase.DRAINING:
            s.phase = Phase.NONE
        log.info("reload: %s restarted with its new config (changed: %s)", s.id, ", ".join(p.fields))
        self._retire()
        s = self.slots.get(s.id, s)
        if relaunch and not s.queue.awaited and s.managed and s.state in (State.STOPPED, State.FAILED):
            self._start(s)
        self._pump()

    def _remove(self, s: Slot) -> Change:
        """Take a model out: no new request from now on; its engine stops once its requests drain."""
        s.removed = True
        if (p := self._pending.pop(s.id, None)) and p.task:
            p.task.cancel()
        if not (s.state == State.READY and s.handle is not None) and s.managed:
            s.queue.fail(self._removed_error(s))
            if s.phase is Phase.NONE:
                s.phase = Phase.DRAINING  # never started again
        if not runs(s) and s.in_flight == 0 and not s.queue.awaited:
            self._drop(s)
            return Change(model=s.id, change="removed", detail="gone")
        self._removing[s.id] = asyncio.create_task(self._drain_and_remove(s), name=f"reload-remove-{s.id}")
        return Change(model=s.id, change="removing", detail=f"takes no new request; {s.in_flight} in flight and "
                      f"{s.queued} waiting finish, then it stops")

    async def _drain_and_remove(self, s: Slot) -> None:
        """Serve what a removed model has (at most drain_timeout), then stop its engine and drop its slot."""
        deadline = time.monotonic() + self._drain_timeout()
        while (s.in_flight or s.queue.awaited) and time.monotonic() < deadline:
            if s.managed and not (s.state == State.READY and s.handle is not None):  # it stopped meanwhile
                s.queue.fail(self._removed_error(s))
                if s.phase is Phase.NONE:
                    s.phase = Phase.DRAINING
            await asyncio.sleep(POLL_S)
        if s.in_flight:
            log.warning("%s: %d request(s) still in flight after drain_timeout: stopping it anyway", s.id, s.in_flight)
        s.queue.fail(self._removed_error(s))
        if s.managed:
            s.phase = Phase.DRAINING
        while runs(s):
            if s.start_task:
                s.start_task.cancel()
            task = s.start_task or s.stop_task or self._stop(s, "removed from the registry")
            if task is None:  # nothing this manager can stop (a state with no engine): it is gone
                break
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(task)
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise asyncio.CancelledError
        self._removing.pop(s.id, None)
        self._drop(s)
        log.info("reload: %s removed: its engine is stopped", s.id)

    def _drop(self, s: Slot) -> None:
        if self.slots.get(s.id) is s:
            del self.slots[s.id]
        self._retire()
        self._pump()

    def _removed_error(self, s: Slot) -> ModelNotFound:
        return ModelNotFound(f"model {s.id!r} was removed from the registry", param="model")

    def _drain_timeout(self) -> float:
        return self._registry.hub.drain_timeout  # type: ignore[union-attr]  # set by the reload that made the task

    def _retire(self) -> None:
        """Drop the runtimes of changed hosts that no engine uses any more (the next start makes them again)."""
        for key in list(self._retiring):
            if any(runs(s) and (s.runtime_name, s.host) == key for s in self.slots.values()):
                continue
            self._retiring.discard(key)
            if rt := self._runtimes.pop(key, None):
                task = asyncio.create_task(rt.close(), name=f"close-runtime-{key[0]}-{key[1]}")
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
