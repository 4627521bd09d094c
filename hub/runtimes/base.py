"""The surface of a runtime: start a LaunchSpec and get a Handle with the engine's base URL; ask whether it is
alive; wait for it to exit; stop it (a grace period, then kill); read its log."""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engines.base import LaunchSpec


@dataclass
class Handle:
    """A running engine, as its runtime knows it."""

    model_id: str
    base_url: str
    ref: Any = None  # the runtime's own object: a Process, a Container id
    info: dict[str, Any] = field(default_factory=dict)  # shown in /hub/models (pid, container, host)


class Runtime(ABC):
    """Runs engines. Every method that blocks says what it waits for."""

    name: str = ""

    def allocate_port(self) -> int:
        """A free TCP port on this machine's loopback (the OS picks it)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

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

    async def adopt(self, model_id: str, launch: Callable[[int], LaunchSpec]) -> tuple[Handle, LaunchSpec] | None:
        """At hub start: take over the model's engine if it still runs from an earlier hub (`launch(port)` gives
        the spec it should have been started with); None when there is nothing to adopt."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook, most runtimes hold nothing
        """Release the runtime's own resources (clients, connections)."""
