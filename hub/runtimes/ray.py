"""The ray runtime: each engine runs on a node of a Ray cluster, inside a detached actor named `hub-<id>` (namespace
`[hub] ray_namespace`) that asks for the model's resources (hub/runtimes/rayplace.py): Ray picks the node. The
actor (hub/runtimes/rayactor.py) starts the engine's process there and reports the node and the listen address;
the hub proxies to it. Only this module imports Ray, and only when a model runs under it: the hub's light
environment needs no Ray.

Rules:
- One cluster per hub: `[hub] ray_address` (unset: $RAY_ADDRESS, else the cluster started on this machine). The
  hub's machine must be a node of it (the head, or `ray start --address=... --num-cpus=0`), or reach it through
  Ray Client (`ray://host:10001`).
- The engine environment and a local model folder must exist on the node at the paths the hub's registry gives
  (the same path on every box, or a shared file system): the actor checks and says which node lacks what.
- Placement: the actor's creation waits up to `[hub] ray_place_timeout` for a node; past it, a start whose actor
  has no node yet fails, naming what each node lacks (rayplace.unplaced); one that has a node goes on (its worker
  is starting). Before that, the manager's ray planner (hub/manager/rayplan.py) evicts idle ray models that hold
  what the start needs: `room` tells it where the request fits.
- Health: `wait_exit` asks the actor every POLL_SECONDS; when the actor dies or cannot be reached and its node is
  no longer alive in Ray's view (Ray takes about 15 to 30 s to notice), the engine is reported lost with the node
  named. A node that dies takes its engine along (PR_SET_PDEATHSIG in the actor).
- Stop: the actor kills the engine's process group (SIGTERM, SIGKILL after the grace), the hub keeps its log in
  `<state_dir>/logs/<model>.log`, then kills the actor. Restart safety: `adopt` takes over a live actor whose
  settings hash matches the registry's (`[hub] keep_running = true` leaves them running at shutdown); another one
  is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

# Ray's C++ failure handler would catch the SIGTERM of the hub's own graceful shutdown and exit by the signal; Ray
# reads this when it is imported
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")

import ray
from ray import cloudpickle
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayError

from hub.config import Registry
from hub.engines.base import LaunchSpec
from hub.errors import RuntimeFailure
from hub.runtimes import rayactor
from hub.runtimes.base import Handle, Runtime
from hub.runtimes.logs import save_log, tail_file
from hub.runtimes.rayplace import Node, Request, Room, nodes_of, request_of, room, unplaced

log = logging.getLogger("hub.ray")
POLL_SECONDS = 5.0  # how long one call to the actor waits for the engine to exit
CALL_SLACK = 30.0  # what a call to the actor may take beyond its own wait (a busy node, a slow network)
PROBE_SECONDS = 5.0  # how long the first connection to the cluster's address may take
LOG_CALL_SECONDS = 5.0  # `logs` blocks its caller: it gives up on the actor after this long and reads the kept log


def actor_name(model_id: str) -> str:
    """The name of a model's actor in the hub's namespace."""
    return f"hub-{model_id}"


def first_line(err: BaseException) -> str:
    """The first meaningful line of a Ray error (they carry long tracebacks)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


class RayRuntime(Runtime):
    """Engines in detached actors on the nodes of a Ray cluster."""

    name = "ray"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.address = registry.hub.ray_address or "auto"
        self.namespace = registry.hub.ray_namespace
        self.log_dir = registry.state_dir / "logs"
        self._lock = asyncio.Lock()
        self._hub_address: str | None = None  # this machine's address, as Ray's nodes report theirs
        self._actor_class: Any = None
        self._actors: dict[str, Any] = {}  # model id -> its live actor

    # ---- the cluster ----

    async def connect(self) -> None:
        """Join the cluster as a driver on first use (RuntimeFailure saying what to do when it cannot)."""
        async with self._lock:
            if self._hub_address is None:
                await asyncio.to_thread(self._connect)

    def _connect(self) -> None:
        if not ray.is_initialized():
            self._probe()
            try:
                ray.init(address=self.address, namespace=self.namespace, log_to_driver=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise RuntimeFailure(
                    f"cannot reach the Ray cluster at {self.address!r} ({first_line(err)}): start it (`ray start "
                    "--head` on one box, `ray start --address=HEAD:6379` on the others, this one included) or set "
                    "[hub] ray_address") from None
        cloudpickle.register_pickle_by_value(rayactor)  # the nodes need Ray, not the hub
        self._actor_class = ray.remote(rayactor.EngineActor)
        self._hub_address = ray.util.get_node_ip_address()
        log.info("connected to the Ray cluster at %s (namespace %s)", self.address, self.namespace)

    def _probe(self) -> None:
        """Fail at once when a named cluster address does not answer: Ray's own connect retries for minutes."""
        address, source = self.address, "[hub] ray_address"
        if address == "auto":  # ray.init then takes $RAY_ADDRESS, when set, before this machine's cluster
            address, source = os.environ.get("RAY_ADDRESS") or "auto", "$RAY_ADDRESS"
        if address in ("auto", "local"):
            return
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
        except (OSError, ValueError) as err:
            where = f"{address!r} (from $RAY_ADDRESS)" if source == "$RAY_ADDRESS" else repr(address)
            raise RuntimeFailure(
                f"cannot reach the Ray cluster at {where} ({getattr(err, 'strerror', None) or err}): start "
                f"it (`ray start --head` on one box) or fix {source} (host:6379, or ray://host:10001)"
            ) from None

    def _nodes(self) -> list[Node]:
        from ray._private import state  # per-node availability has no public API without the dashboard

        try:
            available = state.available_resources_per_node()
        except Exception:  # an older or newer Ray: totals only, so "now" is judged on totals
            available = {n["NodeID"]: n.get("Resources", {}) for n in ray.nodes()}
        return nodes_of(ray.nodes(), available)

    async def nodes(self) -> list[Node]:
        """The cluster's nodes with their total and available resources."""
        await self.connect()
        return await asyncio.to_thread(self._nodes)

    async def room(self, model_id: str) -> Room:
        """Where the model's request fits on the cluster now, or could once nodes are free."""
        return room(request_of(self.registry, model_id), await self.nodes())

    async def _node_alive(self, node_id: str) -> bool:
        with contextlib.suppress(Exception):
            return any(n.id == node_id and n.alive for n in await self.nodes())
        return True  # the cluster cannot be asked: not a reason to call the node dead

    async def _call(self, ref: Any, timeout: float) -> Any:
        """Await an actor call without holding a thread; TimeoutError past `timeout` seconds."""
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)

    # ---- what runs ----

    def plan_of(self, model_id: str, spec: LaunchSpec, port: int) -> dict[str, Any]:
        """What the actor runs (rayactor.EngineActor's `plan`), with a hash of the settings for adoption."""
        hint = None
        if spec.command:
            program = list(spec.command)
        elif spec.module and spec.env_name:
            py = self.registry.envs_dir / spec.env_name / "bin" / "python"
            program = [str(py), "-m", spec.module]
            hint = (f"make the {spec.env_name} engine environment there at the same path (`hub engines setup "
                    f"{spec.env_name}` with HUB_ENVS_DIR={self.registry.envs_dir}), or share that folder with every "
                    "node")
        else:
            raise RuntimeFailure("the engine's launch spec names neither a command nor a module and environment")
        plan = {"program": program, "args": list(spec.args), "bind_flag": spec.bind_flag,
                "env": {k: str(v) for k, v in spec.environ.items()}, "cwd": str(spec.cwd) if spec.cwd else None,
                "model_path": spec.model_path, "port": port}
        settings = {**plan, "request": request_of(self.registry, model_id).options()}
        plan["hash"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        plan["namespace"] = self.namespace
        plan["num_cpus"] = settings["request"]["num_cpus"]
        plan["missing_hint"] = hint
        return plan

    def _create(self, model_id: str, plan: dict[str, Any], request: Request) -> Any:
        env = {"PYTHONUNBUFFERED": "1", **plan["env"]}
        return self._actor_class.options(
            name=actor_name(model_id), namespace=self.namespace, lifetime="detached", max_restarts=0,
            max_concurrency=8, runtime_env={"env_vars": env}, **request.options(),
        ).remote(model_id, plan, self._hub_address)

    def _placed(self, actor: Any) -> bool:
        """Whether Ray has given the actor a worker on a node (its constructor may still run)."""
        from ray._private import state

        try:
            return bool((state.actors(actor._actor_id.hex()).get("Address") or {}).get("Port"))
        except Exception:
            return False

    async def start(self, model_id: str, spec: LaunchSpec, port: int) -> Handle:
        await self.connect()
        plan = self.plan_of(model_id, spec, port)
        request = request_of(self.registry, model_id)
        await self._remove_leftover(model_id)
        self._write_log_header(model_id, plan, request)
        creating = asyncio.ensure_future(asyncio.to_thread(self._create, model_id, plan, request))
        try:
            actor = await asyncio.shield(creating)
        except asyncio.CancelledError:  # the hub stops: the actor being made must not outlive this start
            with contextlib.suppress(Exception):
                await self._kill(await creating)
            raise
        except (RayError, ValueError) as err:  # ValueError: options it refuses, a name still taken
            raise RuntimeFailure(f"Ray refused the actor of model {model_id!r}: {first_line(err)}") from None
        waited, limit = self.registry.hub.ray_place_timeout, self.registry.hub.start_timeout
        try:
            try:
                info = await self._call(actor.info.remote(), waited)
            except TimeoutError:
                if not await asyncio.to_thread(self._placed, actor):
                    raise RuntimeFailure(unplaced(model_id, request, await self.nodes(), waited)) from None
                try:
                    info = await self._call(actor.info.remote(), limit)
                except TimeoutError:
                    raise RuntimeFailure(
                        f"the Ray actor of model {model_id!r} was placed on a node but did not answer within "
                        f"start_timeout ({limit:g}s): see `ray list actors` and the node's Ray logs") from None
        except RayError as err:
            await self._discard_actor(actor)
            raise RuntimeFailure(f"the Ray actor of model {model_id!r} could not start: {first_line(err)}") from None
        except BaseException:  # unplaced, cancelled (the hub stops), timed out: no actor nor engine is left behind
            await self._discard_actor(actor)
            raise
        if info["error"]:
            await self._kill(actor)
            raise RuntimeFailure(f"model {model_id!r}: {info['error']}")
        handle = self._handle(model_id, actor, info)
        log.info("%s: started on %s as actor %s (pid %s)", model_id, handle.info["node"], actor_name(model_id),
                 info["pid"])
        return handle

    def _handle(self, model_id: str, actor: Any, info: dict[str, Any]) -> Handle:
        self._actors[model_id] = actor
        node = f"node {info['node_id'][:8]} ({info['node_address']})"
        return Handle(model_id, f"http://{info['host']}:{info['port']}", ref=actor,
                      info={"actor": actor_name(model_id), "namespace": self.namespace, "node": node,
                            "node_id": info["node_id"], "node_address": info["node_address"], "pid": info["pid"],
                            "port": info["port"]})

    async def _remove_leftover(self, model_id: str) -> None:
        """Stop an actor of the model left by a crash or a killed hub (it would hold its name and resources)."""
        try:
            old = await asyncio.to_thread(ray.get_actor, actor_name(model_id), self.namespace)
        except ValueError:
            return
        log.info("%s: stopping a leftover actor %s", model_id, actor_name(model_id))
        with contextlib.suppress(RayError, TimeoutError):
            await self._call(old.stop.remote(self.registry.hub.stop_timeout), self.registry.hub.stop_timeout + 15)
        await self._kill(old)

    async def _discard_actor(self, actor: Any) -> None:
        """Undo a start that failed or was cancelled: once the actor has a node, its constructor may have started
        the engine, and killing the actor takes only the engine's leader along (PR_SET_PDEATHSIG), not its
        children: the actor stops the process group first (its call waits for the constructor to end)."""
        if await asyncio.to_thread(self._placed, actor):
            grace = self.registry.hub.stop_timeout
            with contextlib.suppress(RayError, TimeoutError):
                await self._call(actor.stop.remote(grace), grace + CALL_SLACK)
        await self._kill(actor)

    async def _kill(self, actor: Any) -> None:
        """Kill an actor and wait (a few seconds at most) until Ray has released its name and resources."""
        with contextlib.suppress(Exception):
            await asyncio.to_thread(ray.kill, actor, no_restart=True)
        from ray._private import state

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                entry = await asyncio.to_thread(state.actors, actor._actor_id.hex())
            except Exception:
                return
            if not entry or entry.get("State") == "DEAD":
                return
            await asyncio.sleep(0.1)

    # ---- the Runtime surface ----

    async def alive(self, handle: Handle) -> bool:
        try:
            return await self._call(handle.ref.poll.remote(), CALL_SLACK) is None
        except ActorDiedError:
            return False
        except (RayError, TimeoutError):
            return True  # unreachable for now: wait_exit decides once Ray knows the node's fate

    async def wait_exit(self, handle: Handle) -> str:
        """Ask the actor until the engine exits (its code) or the actor is gone (its node's fate)."""
        node = handle.info["node"]
        while True:
            try:
                code = await self._call(handle.ref.wait.remote(POLL_SECONDS), POLL_SECONDS + CALL_SLACK)
            except ActorDiedError:
                if not await self._node_alive(handle.info["node_id"]):
                    return f"was lost with Ray {node}, which died"
                return f"was lost: its Ray actor {actor_name(handle.model_id)} on {node} died (killed outside the hub?)"
            except (ActorUnavailableError, GetTimeoutError, TimeoutError, RayError):
                if not await self._node_alive(handle.info["node_id"]):
                    return f"was lost with Ray {node}, which died"
                await asyncio.sleep(1.0)
                continue
            if code is not None:
                await self._save_log(handle)
                return f"{rayactor.describe_exit(code)} on Ray {node}"

    async def stop(self, handle: Handle, timeout: float) -> None:
        """The actor stops the engine's process group (grace `timeout`, then SIGKILL); keep its log; kill the
        actor."""
        actor = handle.ref
        with contextlib.suppress(RayError, TimeoutError):
            await self._call(actor.stop.remote(timeout), timeout + CALL_SLACK)
        await self._save_log(handle)
        await self._kill(actor)
        if self._actors.get(handle.model_id) is actor:
            del self._actors[handle.model_id]
        log.info("%s: stopped its engine and actor on %s", handle.model_id, handle.info["node"])

    def logs(self, model_id: str, tail: int = 100) -> str:
        actor = self._actors.get(model_id)
        if actor is not None:
            with contextlib.suppress(RayError, GetTimeoutError):
                return ray.get(actor.logs.remote(tail), timeout=LOG_CALL_SECONDS)
        return tail_file(self.log_dir / f"{model_id}.log", tail)

    def _write_log_header(self, model_id: str, plan: dict[str, Any], request: Request) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{model_id}.log").open("w") as f:
            f.write(f"# hub: {time.strftime('%Y-%m-%d %H:%M:%S')} starting {model_id} as Ray actor "
                    f"{actor_name(model_id)} asking for {request.describe()}: "
                    f"{' '.join([*plan['program'], *plan['args']])}\n")

    async def _save_log(self, handle: Handle) -> None:
        """Keep the engine's output (from its node) in the state dir, after the hub's header line."""
        try:
            text = await self._call(handle.ref.log_text.remote(), LOG_CALL_SECONDS)
        except (RayError, TimeoutError):
            return
        save_log(self.log_dir, handle.model_id, text)

    async def adopt(self, model_id: str, launch: Callable[[int], LaunchSpec]) -> tuple[Handle, LaunchSpec] | None:
        """Take over the model's actor if it still runs its engine with the registry's settings; else stop it."""
        await self.connect()
        try:
            actor = await asyncio.to_thread(ray.get_actor, actor_name(model_id), self.namespace)
        except ValueError:
            return None
        try:
            info = await self._call(actor.info.remote(), CALL_SLACK)
        except (RayError, TimeoutError) as err:
            log.info("%s: removing its actor, which does not answer (%s)", model_id, first_line(err))
            await self._kill(actor)
            return None
        spec = None
        with contextlib.suppress(RuntimeFailure, ValueError):
            spec = launch(int(info["port"]))
        same = spec is not None and self.plan_of(model_id, spec, int(info["port"]))["hash"] == info["hash"]
        if not same or info["error"] or info["code"] is not None:
            log.info("%s: stopping its actor on node %s (%s)", model_id, info["node_id"][:8],
                     "settings changed" if not same else "its engine is not running")
            with contextlib.suppress(RayError, TimeoutError):
                await self._call(actor.stop.remote(self.registry.hub.stop_timeout), self.registry.hub.stop_timeout + 15)
            await self._kill(actor)
            return None
        handle = self._handle(model_id, actor, info)
        log.info("%s: adopting its running actor on %s (pid %s)", model_id, handle.info["node"], info["pid"])
        return handle, spec  # type: ignore[return-value]

    async def close(self) -> None:
        """Leave the cluster (detached actors live on: a stopped hub has stopped its own, unless keep_running)."""
        if self._hub_address is not None and ray.is_initialized():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(ray.shutdown)
        self._hub_address = None
