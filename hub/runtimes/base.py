"""The surface of a runtime: turn an engine's runtime-neutral LaunchSpec into a running server and get a Handle with
its base URL; ask whether it is alive; wait for it to exit; stop it (a grace period, then kill); read its log; tell
the GPUs of the host it runs engines on."""

from __future__ import annotations

import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from hub.engines.base import LaunchSpec
from hub.procs import free_port


@dataclass
class Handle:
    """A running engine, as its runtime knows it."""

    model_id: str
    base_url: str
    ref: Any = None  # the runtime's own object: a Process, a Container id
    info: dict[str, Any] = field(default_factory=dict)  # shown in /hub/models (pid, container, host)


@cache
def local_gpu_memory_gb() -> dict[int, float]:
    """Total memory in GB of each GPU of this machine by index, from nvidia-smi ({} without one). Asked once per
    process (a machine's GPUs do not change while the hub runs); the first call blocks for as long as nvidia-smi
    takes (at most 30 s)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {}
    try:
        out = subprocess.run([smi, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    gpus = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        try:
            index, mib = (part.strip() for part in line.split(","))
            gpus[int(index)] = float(mib) / 1024
        except ValueError:
            continue
    return gpus


class Runtime(ABC):
    """Runs engines. Every method that blocks says what it waits for."""

    name: str = ""

    def allocate_port(self) -> int:
        """A free TCP port on this machine's loopback (the OS picks it)."""
        return free_port()

    async def gpu_memory_gb(self) -> dict[int, float]:
        """Total memory in GB of each GPU of the host this runtime starts engines on ({}: none, or unknown)."""
        return {}

    @abstractmethod
    async def start(self, model_id: str, spec: LaunchSpec, port: int) -> Handle:
        """Start the engine; returns once it is launched (not yet ready). Raises RuntimeFailure."""

    @abstractmethod
    async def alive(self, handle: Handle) -> bool:
        """Whether the engine is still running."""

    @abstractmethod
    async def wait_exit(self, handle: Handle) -> str:
        """Wait until the engine exits, however it ends; returns why ("exited with code 1")."""

    @abstractmethod
    async def stop(self, handle: Handle, timeout: float) -> None:
        """Ask the engine to stop, wait up to `timeout` seconds, then kill it and release what it held."""

    @abstractmethod
    def logs(self, model_id: str, tail: int = 100) -> str:
        """The last `tail` lines of the engine's log (of its latest run)."""

    async def holds(self, spec: LaunchSpec) -> bool:
        """Whether this host has what the spec needs already (its container image), so that a start there
        downloads nothing; False when unknown. Raises RuntimeFailure when the host cannot be reached."""
        return False

    async def adopt(self, model_id: str, launch: Callable[[int], LaunchSpec]) -> tuple[Handle, LaunchSpec] | None:
        """At hub start: take over the model's engine if it still runs from an earlier hub (`launch(port)` gives
        the spec it should have been started with); None when there is nothing to adopt."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook, most runtimes hold nothing
        """Release the runtime's own resources (clients, connections)."""
