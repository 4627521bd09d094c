"""The Manager: the orchestration of starts, stops, placement, the memory budget and crashes.

The rules are in the package's docstring (hub/manager/__init__.py); the states and their moves in states.py; the
queues, limits and runs (ModelQueue, Lease) in queue.py and the pump across models in dispatch.py; the Slot in
slot.py; sleeping and the sleep budget in sleep.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from hub.config import ModelConfig, Registry
from hub.downloads import Downloads, target_of
from hub.downloads.target import complete_path, models_sharing
from hub.engines import get_engine
from hub.engines.base import LaunchContext, LaunchSpec
from hub.errors import (
    DownloadFailed,
    ModelNotFound,
    ModelUnavailable,
    RuntimeFailure,
    StartFailed,
    StartTimeout,
)
from hub.ledger import Ledger, ledger_memory_of
from hub.manager.dispatch import Dispatcher
from hub.manager.planner import (
    AwaitStops,
    Candidate,
    Decision,
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
from hub.manager.queue import Lease
from hub.manager.rayplan import ray_plan
from hub.manager.reload import ReloadReport, Reloads
from hub.manager.sleep import Sleeper, SleepTiers
from hub.manager.slot import Slot
from hub.manager.states import HOLDS_MEMORY, Observer, Phase, State, move
from hub.runtimes import Runtime, make_runtime

log = logging.getLogger("hub.manager")
LOG_TAIL_LINES = 30


def _retrieve(task: asyncio.Task) -> None:
    """Mark a start task's exception as seen: its waiters (if any) got it already."""
    if not task.cancelled():
        task.exception()


class Manager:
    """Starts, stops, swaps and puts engines to sleep on demand; queues requests. Each slot's queue is a
    queue.ModelQueue, which asks `dispatch` (dispatch.py) about the other models; sleep is its `sleeper` (sleep.py)."""

    def __init__(
        self,
        registry: Registry,
        runtime_factory: Callable[[str, str], Runtime] | None = None,
        memory_of: Callable[[str, ModelConfig], float] | None = None,
    ) -> None:
        self.registry = registry
        self.observer: Observer | None = None  # given to every slot, those a reload adds too (hub/metrics.py)
        self.slots: dict[str, Slot] = {mid: self._make_slot(mid, cfg) for mid, cfg in registry.models.items()}
        self._runtime_factory = runtime_factory or (lambda name, host: make_runtime(name, self.registry, host))
        self._runtimes: dict[tuple[str, str], Runtime] = {}
        self.ledger = Ledger.of(registry)  # measured peaks (benchmarks/memory.py): budget of undeclared models
        self._memory_of = memory_of or ledger_memory_of(self.ledger)
        self._budget_locks: dict[str, asyncio.Lock] = {}
        self._http = httpx.AsyncClient(timeout=5.0, trust_env=False)  # its own engines: never via a proxy
        self.dispatch = Dispatcher(self.slots, self._begin_start)
        self.sleeper: Sleeper = SleepTiers(registry, self.slots, self._http, stop=self._begin_stop,
                                           pump=self.dispatch.pump)
        self._ttl_task: asyncio.Task | None = None
        self.reloads = Reloads(self.slots, self._make_slot, self._runtimes, start=self._begin_start,
                               stop=self._begin_stop, pump=self.dispatch.pump)
        self.downloads = Downloads(registry.state_dir / "logs")  # pulls of hub repo sources (hub/downloads/)

    # ---- lifecycle of the manager itself ----

    async def startup(self) -> None:
        """Adopt engines an earlier hub left running (docker, ray), then start the idle-TTL sweeper."""
        await asyncio.gather(*(self._adopt(s) for s in self.slots.values() if s.engine.managed))
        self._ttl_task = asyncio.create_task(self._ttl_loop(), name="hub-ttl")

    async def _adopt(self, s: Slot) -> None:
        """Take over a model's engine that still runs (on the first of its hosts where one runs; one found on
        another host too is stopped); it becomes ready once it answers (a normal start wait)."""
        for host in s.cfg.hosts:
            rt = self.runtime(s, host)
            try:
                gpus = await rt.gpu_memory_gb()
                pulled: dict[str, dict[str, str]] = {}

                def launch(port: int, gpus: dict[int, float] = gpus, host: str = host,
                           pulled: dict[str, dict[str, str]] = pulled) -> LaunchSpec:
                    spec = s.engine.launch(LaunchContext(s.id, s.cfg, self.registry, port, gpus))
                    if "env" not in pulled:  # asked only of an engine found running (a cache read, once)
                        pulled["env"] = self._pulled_env(s, host)
                    spec.environ.update(pulled["env"])
                    return spec

                adopted = await rt.adopt(s.id, launch)
            except RuntimeFailure as err:
                log.warning("%s: cannot look for an engine to adopt on host %s: %s", s.id, host, err)
                continue
            if adopted and s.handle:
                log.warning("%s: an engine runs on host %s too: stopping it", s.id, host)
                with contextlib.suppress(Exception):
                    await rt.stop(adopted[0], self.registry.hub.stop_timeout)
            elif adopted:
                s.host, (s.handle, s.spec), s.offline_env = host, adopted, pulled.get("env", {})
        if s.handle:
            self._begin_start(s, name=f"adopt-{s.id}")

    def _pulled_env(self, s: Slot, host: str) -> dict[str, str]:
        """What an engine started after its source's pull had in its environment (offline, on the cache), so that
        the spec an adopted engine is compared with has it too ({} where nothing was pulled)."""
        try:
            t = target_of(self.registry, s.id, host)
            return t.engine_env() if t and complete_path(t) else {}
        except Exception as err:  # a model the hub cannot pull: its engine was started as before
            log.debug("%s: no pull target on host %s: %r", s.id, host, err)
            return {}

    async def shutdown(self) -> None:
        """Fail the waiting requests, stop every engine the hub started and wait for them to exit (each within
        stop_timeout)."""
        self.dispatch.close("the hub is shutting down")
        self.reloads.close()
        if self._ttl_task:
            self._ttl_task.cancel()
        for s in self.slots.values():
            if s.start_task:
                s.start_task.cancel()
        await asyncio.gather(
            *(s.start_task for s in self.slots.values() if s.start_task), return_exceptions=True
        )
        keep = self.registry.hub.keep_running
        await asyncio.gather(*(self._stop(s, "hub shutdown") for s in self.slots.values()
                               if not (keep and s.runtime_name in ("docker", "ray"))), return_exceptions=True)
        await self.downloads.shutdown()  # no download worker outlives the hub
        for rt in self._runtimes.values():
            await rt.close()
        await self._http.aclose()

    # ---- what the router and the admin API call ----

    def slot(self, model_id: str) -> Slot:
        """The slot of a registered model, or ModelNotFound listing the ones that exist (a model removed by a reload
        is gone for new requests at once, while it drains)."""
        s = self.slots.get(model_id)
        if s is None and ":" in model_id:  # <id>:<lora>: the model that serves the adapter
            s = self.slots.get(self.registry.split_adapter(model_id)[0])
            if why := self.registry.no_adapter(model_id, s.cfg if s is not None else None):
                raise ModelNotFound(why, param="model")
        if s is None or s.removed:
            valid = ", ".join(m for m, o in self.slots.items() if not o.removed) or "none registered"
            gone = " was removed from the registry" if s else " does not exist"
            raise ModelNotFound(f"model {model_id!r}{gone} (available: {valid})", param="model")
        return s

    async def reload(self, new: Registry, restart: bool = False) -> ReloadReport:
        """Take a new (already validated) registry while serving: models added, changed and removed as
        hub/manager/reload.py says, `restart` restarting changed engines at once; two reloads never mix."""
        return await self.reloads.apply(self.registry, new, restart, self._use)

    def _use(self, registry: Registry) -> None:
        """Hold `registry` from now on (a reload), the sleeper too; runtimes made from now on see it."""
        self.registry = registry
        self.sleeper.registry = registry  # type: ignore[attr-defined]

    def _make_slot(self, mid: str, cfg: ModelConfig) -> Slot:
        """A new model's slot under the current registry."""
        return Slot(mid, cfg, get_engine(cfg.engine), self.registry.limits_of(mid),
                    runtime_name=self.registry.runtime_of(mid), observer=self.observer)

    def ttl_of(self, s: Slot) -> float:
        """Seconds of idleness after which a model is stopped (0: never): its own ttl, else [hub] idle_ttl."""
        return self.registry.hub.idle_ttl if s.cfg.ttl is None else s.cfg.ttl

    async def acquire(self, model_id: str, abandoned: Callable[[], Awaitable[object]] | None = None,
                      background: bool = False) -> Lease:
        """Wait until the model can serve one more request (starting it if needed, at most max_wait) and hold it:
        its queue's ModelQueue.acquire, which says what it raises, what `abandoned` and `background` are."""
        return await self.slot(model_id).queue.acquire(self.dispatch, abandoned, background)

    async def load(self, model_id: str) -> Slot:
        """Start a model (if it is not running) and wait until it is ready; no request slot is taken."""
        s = self.slot(model_id)
        with s.queue.loading():
            for _ in range(3):  # a model stopped between its start and our turn is started again
                if s.state == State.READY:
                    return s
                if s.state == State.STOPPING and s.stop_task:
                    await asyncio.shield(s.stop_task)
                await asyncio.shield(s.start_task or self._begin_start(s))
        if s.state == State.READY:
            return s
        raise ModelUnavailable(f"model {model_id!r} keeps stopping right after it starts ({s.reason}); "
                               f"see `hub logs {model_id}`")

    async def unload(self, model_id: str) -> Slot:
        """Stop a model: waits up to drain_timeout for its requests to finish, then stops it anyway."""
        s = self.slot(model_id)
        if not s.engine.managed:
            where = s.engine.upstream(s.cfg).base_url
            raise ModelUnavailable(f"model {model_id!r} is served by {where}: the hub does not manage it")
        if s.start_task and s.state == State.DOWNLOADING:  # no engine yet: its start is called off, not awaited
            s.queue.fail(ModelUnavailable(f"model {model_id!r} was unloaded while its source downloaded (the pull "
                                          "goes on: `hub pull --cancel` stops it); send the request again to start "
                                          "it"))
            s.start_task.cancel()
        if s.start_task:
            await asyncio.wait({s.start_task})  # its outcome is the start's waiters' to hear; a cancelled one too
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(s.queue.idle.wait(), self.registry.hub.drain_timeout)
        await self._stop(s, "unloaded on request")
        return s

    def logs(self, model_id: str, tail: int = 100) -> str:
        """The tail of a model's engine log."""
        s = self.slot(model_id)  # a LoRA adapter's id (<id>:<name>): its model's engine log
        if not s.engine.managed:
            return ""
        return self.runtime(s).logs(s.id, tail)

    def memory_of(self, s: Slot) -> float:
        """The GB a model is budgeted at."""
        return self._memory_of(s.id, s.cfg)

    def used_gb(self, host: str) -> float:
        """GB held on a host by models that are starting, ready or stopping."""
        return sum(
            self.memory_of(s) for s in self.slots.values()
            if s.host == host and s.engine.managed and s.state in HOLDS_MEMORY
        )

    def sleep_used_gb(self, host: str) -> float:
        """RAM in GB held on a host by its sleeping models (and those falling asleep)."""
        return self.sleeper.used_gb(host)

    # ---- internals ----

    def runtime(self, s: Slot, host: str | None = None) -> Runtime:
        """The runtime instance a model runs under on `host` (default: where it runs or ran last); one per runtime
        name and host."""
        key = (s.runtime_name, host or s.host)
        if key not in self._runtimes:
            self._runtimes[key] = self._runtime_factory(*key)
        return self._runtimes[key]

    def _begin_start(self, s: Slot, name: str | None = None) -> asyncio.Task:
        """The model's single start task (made now unless one runs); when it fails, its waiters get the error."""
        if s.start_task is None:
            s.start_task = asyncio.create_task(self._start(s), name=name or f"start-{s.id}")
            s.start_task.add_done_callback(_retrieve)
            s.start_task.add_done_callback(lambda task: self._start_done(s, task))
        return s.start_task

    def _start_done(self, s: Slot, task: asyncio.Task) -> None:
        if task.cancelled():
            s.queue.fail(ModelUnavailable(f"model {s.id!r}: its start was cancelled (the hub is stopping)"))
        elif (err := task.exception()) is not None:
            s.queue.fail(err)
        self.dispatch.pump()

    async def _start(self, s: Slot) -> None:
        """Pick a host, make room, launch the engine, wait until it is ready. Runs as the model's single start
        task."""
        wakes = s.state == State.SLEEPING  # its engine sleeps: this start wakes it rather than launching one
        try:
            if s.handle is None:  # an adopted engine (or a sleeping one) stays where it is
                await self._place(s)
                await self._fetch(s)  # pulls its source where the cache lacks it (state downloading)
            await self._make_room(s, wakes)  # moves s to starting (in phase waking for a wake)
            s.started_at, s.ready_at = time.time(), None
            if wakes:
                s.wakes += 1
                await self._wake(s)
            else:
                s.starts += 1
            await self._launch_and_wait(s)
            move(s, State.READY, None)  # the observer tells a wake's ready from a start's by the phase (cleared below)
            s.ready_at = s.queue.last_used = time.time()
            s.ready_since = time.monotonic()
            if s.watch_task is None or s.watch_task.done():  # a woken engine keeps its watch
                s.watch_task = asyncio.create_task(self._watch(s), name=f"watch-{s.id}")
            log.info("%s ready after %.1fs on host %s%s", s.id, s.ready_at - (s.started_at or s.ready_at), s.host,
                     " (woken)" if wakes else "")
            self.dispatch.pump()
        except ModelUnavailable as err:  # MemoryBusy, StartFailed, StartTimeout, nobody waits any more: said already
            if s.state == State.DOWNLOADING:  # pulled, then no room (MemoryBusy ...): the next request tries again
                move(s, State.STOPPED, err.message.splitlines()[0])
            raise
        except asyncio.CancelledError:
            if s.state == State.SLEEPING:  # cancelled before it began to wake (the hub is stopping): stop it
                await self._stop(s, "wake cancelled")
                raise
            await self._discard(s, "start cancelled")  # an adopted engine too, if it was cancelled before starting
            if s.state in (State.STARTING, State.DOWNLOADING):
                move(s, State.STOPPED, "start cancelled")
            raise
        except Exception as err:  # a bug in an engine or runtime must not leave the model "starting" forever
            log.exception("starting %s", s.id)
            if s.state == State.DOWNLOADING:
                move(s, State.FAILED, f"internal error: {err!r}")
            if s.state != State.STARTING:  # it struck before the launch (making room): nothing to undo
                raise StartFailed(f"model {s.id!r} failed to start: internal error: {err!r}") from err
            await self._fail(s, f"internal error: {err!r}")
        finally:
            s.start_task = None
            if s.phase is Phase.WAKING:  # the wake is over: ready, or failed
                s.phase = Phase.NONE

    async def _fetch(self, s: Slot) -> None:
        """Before a cold start: where the model's source is a hub repo that the cache its engine reads on its host
        lacks, pull it (joining a pull under way; state downloading) and wait; its engine then runs offline on that
        cache. A failed pull fails the model with the pull's error (DownloadFailed); a pull that ends when nobody
        waits for the model any more leaves it stopped, evicting nothing."""
        s.offline_env = {}
        target = target_of(self.registry, s.id, s.host)
        if target is None:
            return
        if not self.downloads.running(target) and await asyncio.to_thread(complete_path, target):
            s.offline_env = target.engine_env()  # in the cache already: nothing to download, no job to list
            return
        job = self.downloads.start(target, models_sharing(self.registry, target) or [s.id])
        if job.running:
            s.download = job
            move(s, State.DOWNLOADING, f"downloading {target.repo}")
            self.dispatch.pump()
            try:
                await self.downloads.wait(job)  # a cancelled start leaves the job running for its other callers
            finally:
                s.download = None
            if job.status != "done":
                move(s, State.FAILED, f"download of {target.repo} {job.status}: {job.error}")
                raise DownloadFailed(f"model {s.id!r} could not start: {job.error}; pull it again with "
                                     f"`hub pull {s.id}`", headers={"Retry-After": "30"})
            if not s.queue.awaited:
                move(s, State.STOPPED, f"{target.repo} downloaded; no request waits for it any more")
                raise ModelUnavailable(f"model {s.id!r}: start given up after its download, no request waits for it")
        s.offline_env = target.engine_env()

    async def _wake(self, s: Slot) -> None:
        """Ask a sleeping (now starting) model's engine to wake; StartFailed (the engine is stopped) when it
        cannot."""
        try:
            await self.sleeper.wake(s)
        except Exception as err:
            await self._fail(s, f"it could not wake from sleep: {err!r}")

    async def _launch_and_wait(self, s: Slot) -> None:
        rt = self.runtime(s)
        timeout = self.registry.hub.start_timeout
        deadline = time.monotonic() + timeout
        try:
            if s.handle is None or s.spec is None:  # else adopted from an earlier hub
                port = rt.allocate_port()
                ctx = LaunchContext(s.id, s.cfg, self.registry, port, await rt.gpu_memory_gb())
                s.spec = s.engine.launch(ctx)
                s.spec.environ.update(s.offline_env)  # pulled complete: the engine never downloads (hub/downloads/)
                s.handle = await rt.start(s.id, s.spec, port)
        except RuntimeFailure as err:
            await self._fail(s, str(err), with_log=False)
        delay = 0.1
        while not await s.engine.ready(self._http, s.handle.base_url, s.spec):
            if not await rt.alive(s.handle):
                why = await rt.wait_exit(s.handle)
                await self._fail(s, f"the engine {why} before it was ready")
            if time.monotonic() > deadline:
                await self._discard(s, "start timeout")
                move(s, State.FAILED, f"not ready within start_timeout ({timeout:g}s)")
                raise StartTimeout(
                    f"model {s.id!r} was not ready within start_timeout ({timeout:g}s) and was stopped; "
                    f"raise [hub] start_timeout or see `hub logs {s.id}`",
                    headers={"Retry-After": "30"},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    async def _fail(self, s: Slot, reason: str, with_log: bool = True) -> None:
        """Release a starting model's engine, mark the model failed, and raise StartFailed with the reason and the
        tail of its log."""
        # logs blocks (a Docker host, a Ray actor that may be unreachable): off the event loop
        tail = await asyncio.to_thread(self.runtime(s).logs, s.id, LOG_TAIL_LINES) if with_log else ""
        await self._discard(s, reason)
        move(s, State.FAILED, reason)
        msg = f"model {s.id!r} failed to start: {reason}"
        if tail.strip():
            msg += f"\n--- last lines of its log (`hub logs {s.id}`) ---\n{tail.rstrip()}"
        raise StartFailed(msg)

    async def _discard(self, s: Slot, why: str) -> None:
        """Stop and forget the engine of a model that is not (or no longer) serving."""
        if s.watch_task:
            s.watch_task.cancel()
            s.watch_task = None
        if s.handle:
            handle, s.handle = s.handle, None
            with contextlib.suppress(Exception):
                await self.runtime(s).stop(handle, self.registry.hub.stop_timeout)

    async def _stop(self, s: Slot, why: str) -> None:
        """Stop a ready (or failed) model's engine and wait until it is gone; concurrent calls share one stop."""
        if task := self._begin_stop(s, why):
            await asyncio.shield(task)

    def _evict(self, s: Slot, why: str) -> asyncio.Task | None:
        """Take an idle ready model out of the budget: put it to sleep where it may, else stop it. Returns the task
        that finishes once its memory is free (None: nothing to do)."""
        return self.sleeper.begin(s, why) or self._begin_stop(s, why)

    def _begin_stop(self, s: Slot, why: str) -> asyncio.Task | None:
        """Move a ready model (or a failed one that still has an engine) to stopping right away, so that no request
        leases it any more, and return the task that stops its engine: the one in progress, if any. None when
        there is nothing to stop."""
        if not s.managed:
            return None
        if s.stop_task:
            return s.stop_task
        if s.state not in (State.READY, State.SLEEPING, State.FAILED) or (s.state == State.FAILED and not s.handle):
            return None
        move(s, State.STOPPING, why)
        log.info("stopping %s: %s", s.id, why)

        async def run() -> None:
            try:
                await self._discard(s, why)
            finally:
                move(s, State.STOPPED, why)
                s.stop_task = None
                self.dispatch.pump()  # its waiters (if any) start it again

        s.stop_task = asyncio.create_task(run(), name=f"stop-{s.id}")
        return s.stop_task

    async def _watch(self, s: Slot) -> None:
        """Notice an engine that exits while ready or asleep: the model becomes failed and keeps the reason."""
        handle = s.handle
        if handle is None:
            return
        why = await self.runtime(s).wait_exit(handle)
        if s.handle is handle and s.state in (State.READY, State.SLEEPING):
            s.handle, s.watch_task = None, None
            move(s, State.FAILED, f"the engine {why} unexpectedly")
            log.warning("%s: %s", s.id, s.reason)
            with contextlib.suppress(Exception):
                await self.runtime(s).stop(handle, self.registry.hub.stop_timeout)
            self.dispatch.pump()  # its waiters (if any) start it again

    def _budget_lock(self, host: str) -> asyncio.Lock:
        return self._budget_locks.setdefault(host, asyncio.Lock())

    def _peer(self, o: Slot, used_after: float | None = None) -> Peer:
        """How the planners see another model; protected when a request ended on it after `used_after`."""
        return Peer(o.id, o.state, self.memory_of(o), o.cfg.pinned, o.in_flight, o.queued, o.last_used,
                    stopping=o.stop_task is not None or o.phase is Phase.FALLING_ASLEEP,
                    failed_with_handle=o.state == State.FAILED and o.handle is not None,
                    protected=used_after is not None and o.queue.last_request > used_after)

    def _batch_only(self, s: Slot) -> bool:
        """Whether only batch lines wait for s's start while [hub] batch_idle_window is on: the start evicts no
        model that served a request within the window, and waits for it without a deadline."""
        q = s.queue
        return self.registry.hub.batch_idle_window > 0 and bool(q.background) and not q.waiting and not q.loads

    def _peers(self, s: Slot, host: str) -> list[Slot]:
        """The other managed models placed on a host."""
        return [o for o in self.slots.values() if o is not s and o.managed and o.host == host]

    async def _place(self, s: Slot) -> None:
        """Pick the host of a cold start among the model's hosts (planner.place): asks each host's runtime whether
        it holds the model's image already and leaves out hosts it cannot reach."""
        hosts = s.cfg.hosts
        if len(hosts) == 1:
            s.host = hosts[0]
            return
        views = []
        for host in hosts:
            holds, reachable = False, True
            try:
                spec = s.engine.launch(LaunchContext(s.id, s.cfg, self.registry, 0, {}))
                holds = await self.runtime(s, host).holds(spec)
            except RuntimeFailure as err:
                log.info("%s: host %s left out of placement: %s", s.id, host, err)
                reachable = False
            except Exception as err:  # a spec that cannot be made fails the start itself, with its message
                log.debug("%s: no spec to look for on host %s: %r", s.id, host, err)
            peers = tuple(self._peer(o) for o in self._peers(s, host))
            views.append(HostView(host, self.registry.budget_of(host), peers, holds, reachable))
        s.host = place(s.id, self.memory_of(s), views)
        log.info("%s: placed on host %s (of %s)", s.id, s.host, ", ".join(hosts))

    async def _make_room(self, s: Slot, wakes: bool) -> None:
        """Until s fits its host's budget, do what the planner says: wait for stops in progress, stop least recently
        used idle unpinned models, release failed engines, wait for busy or starting ones, or give up; then move s
        to starting. The host's budget lock is held while deciding, stopping and moving, never while waiting for
        other models: a start that fits meanwhile goes ahead. While it waits (phase waiting), s.blocked_on names the
        models it waits for (they are contended: queue.py's run rule); a wake moves to starting in phase waking."""
        host = s.host
        candidate = Candidate(s.id, self.memory_of(s), host, self.registry.budget_of(host))
        began = time.monotonic()
        try:
            while True:
                async with self._budget_lock(host):  # held until it fits or must wait: no start takes what it freed
                    decision = await self._plan_under_lock(s, candidate)
                    if isinstance(decision, Fits):
                        s.phase = Phase.WAKING if wakes else Phase.NONE  # before the move, which the observer sees
                        move(s, State.STARTING, None)
                        return
                await self._wait_for_peers(s, decision, began, wakes)
        finally:
            s.unblock()
            self.dispatch.pump()

    async def _plan_under_lock(self, s: Slot, candidate: Candidate) -> Fits | WaitForBusy:
        """Ask the planner and carry out its stops until it says Fits or WaitForBusy (raise on Impossible)."""
        while True:
            used_after = time.time() - self.registry.hub.batch_idle_window if self._batch_only(s) else None
            match decision := await self._plan(s, candidate, used_after):
                case Fits() | WaitForBusy():
                    return decision
                case AwaitStops(ids):
                    stops = [t for i in ids if (t := self.slots[i].stop_task or self.sleeper.pending(self.slots[i]))]
                    await asyncio.gather(*(asyncio.shield(t) for t in stops), return_exceptions=True)
                case Evict(ids):
                    # every victim stops taking requests now (stopping, or falling asleep: sleep.py); together
                    stops = [self._evict(self.slots[i], f"evicted to make room for {s.id!r}") for i in ids]
                    await asyncio.gather(*(asyncio.shield(t) for t in stops if t))
                case Release(mid):
                    await self._stop(self.slots[mid], "released after failure")
                case Impossible():
                    raise decision.error()

    async def _plan(self, s: Slot, candidate: Candidate, used_after: float | None) -> Decision:
        """The planner's next step for s: its host's budget (planner.plan), or for a ray model Ray's view of the
        cluster (rayplan.ray_plan)."""
        others = self._peers(s, candidate.host)
        peers = [self._peer(o, used_after) for o in others]
        if s.runtime_name == "ray":
            return await ray_plan(self.runtime(s), s, others, peers)  # type: ignore[arg-type]
        return plan(candidate, peers)

    async def _wait_for_peers(self, s: Slot, decision: WaitForBusy, began: float, wakes: bool) -> None:
        """Wait (outside the budget lock) until a busy model is idle, a starting one is ready, or a second has
        passed; with none starting, MemoryBusy once the busy ones have admitted nothing for drain_timeout. A start
        that nobody waits for any more (its requests left, no load, not an adopted engine) gives up here, before
        it evicts anything."""
        if not (s.queue.awaited or (s.handle and not wakes)):
            log.info("%s: start given up while waiting for memory: no request waits for it any more", s.id)
            raise ModelUnavailable(f"model {s.id!r}: start given up, no request waits for it any more")
        # protected models are not contended: their requests keep coming, and the window opens only when they stop
        s.block(frozenset(p.id for p in (*decision.busy, *decision.starting) if not p.protected))
        self.dispatch.pump()  # the models it waits for are contended from now on
        busy = [self.slots[p.id] for p in decision.busy if not p.protected]
        timeout = 1.0
        if not decision.starting and not self._batch_only(s):
            quiet = max([began, *(o.queue.last_admit for o in busy)])
            timeout = min(timeout, quiet + self.registry.hub.drain_timeout - time.monotonic())
            if timeout <= 0:
                raise decision.timeout_error()
        idle = [asyncio.ensure_future(o.queue.idle.wait()) for o in busy]
        starts = [t for p in decision.starting if (t := self.slots[p.id].start_task)]
        try:
            if idle or starts:
                await asyncio.wait([*idle, *starts], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(timeout)
        finally:
            for w in idle:
                w.cancel()

    async def _ttl_loop(self) -> None:
        """Every second: stop (or put to sleep: sleep.py) ready models idle for longer than their ttl."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            expired = [
                (s, ttl) for s in self.slots.values()
                if (ttl := self.ttl_of(s)) > 0 and s.engine.managed and s.state == State.READY
                and s.in_flight == 0 and not s.queue and not s.cfg.pinned and now - s.last_used >= ttl
                and s.phase is not Phase.FALLING_ASLEEP and s.stop_task is None
            ]
            tasks = [t for s, ttl in expired if (t := self._evict(s, f"idle for {ttl:g}s (ttl)"))]
            await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)
