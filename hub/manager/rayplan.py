"""The planner of ray models: Ray's resource accounting replaces the hub's memory budget, and the hub's own rules
(least recently used first, turns, pins) still choose which of its ray models make way.

Ray models live on the host "ray" (config.RAY_HOST), which has no budget: no process or docker model counts them,
and they count nothing twice. `plan_ray` is pure, as planner.plan is, and returns the same decisions, which
Manager._make_room carries out and asks again until Fits:

1. the start wakes or adopts an engine whose actor holds its resources already, or some alive node has room now,
   or no node could ever host it (evicting would not help: Ray queues the actor and the runtime fails the start
   after [hub] ray_place_timeout, naming what is missing):                                        Fits
2. a ray model on a node that could host it is being stopped: its resources are about to be freed: AwaitStops
3. idle (or sleeping: its actor keeps what it asked for) unpinned ones there, least recently used
   first: ONE at a time (Ray alone knows whether that made room; it is asked again after each):   Evict
4. a failed one there that still has an engine:                                                   Release
5. busy or starting unpinned ones there: their turns end (queue.py's run rule):                   WaitForBusy
6. only pinned ones, or work that is not the hub's, hold it: Ray queues the actor (ray_place_timeout) Fits

`ray_plan` is the manager's side: it asks the runtime for the room (rayplace.Room) and keeps the peers whose engine
runs on a node that could host the candidate (or that have no node yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from hub.errors import MemoryBusy, RuntimeFailure
from hub.manager.planner import AwaitStops, Decision, Evict, Fits, Peer, Release, WaitForBusy
from hub.manager.slot import Slot
from hub.manager.states import State
from hub.runtimes.rayplace import Room


class RoomView(Protocol):
    """What the planner asks the ray runtime."""

    async def room(self, model_id: str) -> Room: ...


@dataclass(frozen=True)
class RayWaitForBusy(WaitForBusy):
    """Wait for busy or starting ray models whose nodes could host the candidate."""

    def timeout_error(self) -> MemoryBusy:
        """MemoryBusy naming the least recently used busy ray model."""
        first = self.busy[0]
        return MemoryBusy(
            f"model {self.model!r} needs a Ray node that model {first.id!r} holds, and {first.id!r} is busy "
            f"({first.in_flight} request(s) in flight); retry when it is idle",
            headers={"Retry-After": "5"},
        )


def plan_ray(model: str, room: Room, peers: Sequence[Peer]) -> Decision:
    """The next step towards starting ray model `model` (see the module's docstring); `peers` are the other ray
    models on nodes that could host it."""
    if room.fits_now or not room.ever:
        return Fits()
    if stopping := [p.id for p in peers if p.stopping]:
        return AwaitStops(tuple(stopping))
    ready = sorted((p for p in peers if p.state == State.READY and not p.pinned), key=lambda p: p.last_used)
    asleep = [p for p in peers if p.state == State.SLEEPING and not p.pinned]  # asleep, its actor holds it all
    if idle := sorted([*asleep, *(p for p in ready if p.in_flight == 0 and not p.protected)],
                      key=lambda p: p.last_used):
        return Evict((idle[0].id,))
    if failed := [p for p in peers if p.failed_with_handle]:
        return Release(failed[0].id)
    starting = tuple(p for p in peers if p.state == State.STARTING and not p.pinned)
    if ready or starting:
        return RayWaitForBusy(model, 0.0, "ray", 0.0, tuple(ready), starting)
    return Fits()


async def ray_plan(rt: RoomView, s: Slot, others: Iterable[Slot], peers: Sequence[Peer]) -> Decision:
    """`plan_ray` for slot `s`, with the runtime's view of the cluster; `others` are the slots of `peers`. A cluster
    that cannot be asked is left to the start, which fails with the runtime's message. A start that wakes or adopts
    an engine fits: its actor holds its resources already."""
    if s.handle is not None:
        return Fits()
    try:
        room = await rt.room(s.id)
    except RuntimeFailure:
        return Fits()
    nodes = {o.id: (o.handle.info.get("node_id") if o.handle else None) for o in others}
    near = [p for p in peers if nodes.get(p.id) is None or nodes[p.id] in room.could_host]
    return plan_ray(s.id, room, near)
