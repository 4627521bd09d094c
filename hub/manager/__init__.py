"""The model manager: the lifecycle of every model, queues and limits, the memory budget, placement, idle unloading
and crash handling.

One `Slot` per registered model (hub/manager/slot.py). Its states (stopped, downloading, starting, ready, stopping,
failed, sleeping) and the one table of the moves between them, with its diagram, are in hub/manager/states.py; every
state change goes through `states.move`, which refuses a move the table does not list and tells the slot's
`observer` (an Observer: the metrics). What its tasks do within a state is its `Phase` (states.py): waiting (its start
waits for memory), waking (its start wakes it), falling asleep. A cold start whose hub repo source is not in the cache
pulls it first (downloading: hub/downloads/), holding no memory.

Rules:
- A request holds a Lease while it is served (streams included): leased models are busy. `acquire` gives one at
  once when the model is ready, under max_concurrency and nobody queues before it; else the request waits in the
  model's queue (FIFO) for at most max_wait, start included, or gets 429 when max_queue wait already. A request
  whose task is cancelled (or whose `abandoned()` returns: the client left) leaves the queue. hub/manager/queue.py
  (each slot's ModelQueue) and hub/manager/dispatch.py (the pump and the run rule across models).
- Requests wait rather than fail while memory is busy: a model whose start must wait for another model (busy, or
  still starting) waits for it; the models it waits for are contended and serve in runs (the run rule in queue.py:
  arrival order, except that a model keeps taking new requests for max_run after the wait began and for
  min_residency after it became ready). Once a contended model is idle (nothing in flight), it is evicted.
- Single flight: one start task per model, asked for by its waiting requests (the pump: Dispatcher.pump); when it
  fails, every request waiting for the model gets its error.
- Placement: a model may name several hosts; each cold start picks one (planner.place: where it fits, preferring a
  host that holds its image; else where room is made soonest, least loaded). It runs on one host at a time:
  Slot.host.
- Budget: a model counts at its declared memory_gb, else at its measured peak plus a margin (hub/ledger.py, written
  by benchmarks/memory.py), else 0. A start takes its host's budget lock to decide, stop least-recently-used idle
  unpinned models and move to starting; it waits for busy or starting models outside the lock. A busy model is
  never stopped: once it takes no new requests, the start waits up to drain_timeout after its last admitted
  request, then fails with MemoryBusy naming it.
  Starting, ready and stopping models all count as using memory; sleeping ones do not.
- Sleep: an idle model with `sleep = true` whose engine can sleep is put to sleep instead of stopped when evicted or
  idle past its ttl; asleep it counts against its host's sleep budget (RAM), whose least recently used sleepers are
  stopped to make room. Its next request or load wakes it through its single start task (room is made first, as for
  a start). Unload, shutdown and the sleep budget stop sleepers; a sleeper whose engine exits is failed.
  hub/manager/sleep.py.
  What to stop, wait for or refuse is decided by hub/manager/planner.py (pure, no asyncio); the manager carries
  it out and asks again until the model fits.
- Unmanaged engines (`openai`) are always ready and never started or stopped: their state never moves (their
  queues and limits apply).
- Counters for metrics: on each Slot (starts, wakes, sleeps) and on its queue (admitted, rejected, timed_out,
  abandoned, in_flight, and len() waiting).

The manager is composed, not mixed in: the Manager (core.py, the asyncio orchestration of starts, stops, placement
and the budget) holds the slots, a Dispatcher and a Sleeper; each Slot holds its ModelQueue. The parts see each other
through declared protocols: a ModelQueue knows its model as a `queue.Queued` and asks the rest through
`queue.Dispatch`; the manager asks sleep through `sleep.Sleeper` and gives it its stop and pump as callables; `move`
calls a slot's `states.Observer`. Modules, each importing only those before it:

  states.py    State, Phase, the transition table, move, Observer
  planner.py   eviction and placement (pure: plain values in, one decision out)
  queue.py     ModelQueue (a model's queue, in_flight, counters; acquire, grant, release), Lease, the run rule
  slot.py      Slot: one model's state, phase, engine, tasks and its ModelQueue
  dispatch.py  Dispatcher: the pump and the run rule's view of contention across models
  sleep.py     Sleeper and SleepTiers: sleeping, waking and the sleep budget
  rayplan.py   ray models: Ray's accounting instead of a budget, the hub's LRU and turns (planner's decisions)
  core.py      Manager
"""

from hub.manager.core import Manager
from hub.manager.queue import Lease, ModelQueue
from hub.manager.slot import Slot
from hub.manager.states import HOLDS_MEMORY, TRANSITIONS, InvalidTransition, Observer, Phase, State, move

__all__ = ["HOLDS_MEMORY", "TRANSITIONS", "InvalidTransition", "Lease", "Manager", "ModelQueue", "Observer", "Phase",
           "Slot", "State", "move"]
