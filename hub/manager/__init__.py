"""The model manager: the lifecycle of every model, the memory budget, idle unloading and crash handling.

One `Slot` per registered model. Its states (stopped, starting, ready, stopping, failed) and the one table of the
moves between them, with its diagram, are in hub/manager/states.py; every state change goes through
`states.move`, which refuses a move the table does not list.

Rules:
- Single flight: one start task per model; every request for a cold model awaits that same task, for at most
  start_timeout.
- Budget: a model counts at its declared memory_gb, else at its measured peak plus a margin (hub/ledger.py, written
  by benchmarks/memory.py), else 0. A start first takes its host's budget lock, then stops least-recently-used
  idle unpinned models until the new one fits. A busy model is never stopped: the start waits up to drain_timeout
  for it to go idle, then fails with MemoryBusy naming it.
  Starting, ready and stopping models all count as using memory.
  What to stop, wait for or refuse is decided by hub/manager/planner.py (pure, no asyncio); the manager carries
  it out and asks again until the model fits.
- A request holds a Lease while it is served (streams included): leased models are busy.
- Unmanaged engines (`openai`) are always ready and never started or stopped: their state never moves.

Modules: states.py (State, the transition table, move), planner.py (the eviction planner), core.py (Slot, Lease,
Manager: the asyncio orchestration).
"""

from hub.manager.core import Lease, Manager, Slot
from hub.manager.states import HOLDS_MEMORY, TRANSITIONS, InvalidTransition, State, move

__all__ = ["HOLDS_MEMORY", "TRANSITIONS", "InvalidTransition", "Lease", "Manager", "Slot", "State", "move"]
