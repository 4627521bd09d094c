"""Engines: one module each, with the same small surface (engines.base.Engine).

Every engine, the built-in ones included, is found through the `hub.engines` entry-point group, so a third-party
package adds an engine exactly as this project adds its own (see pyproject.toml).

This package is also imported inside engine environments (`python -m engines.diffusers_server`), which have neither
httpx nor the `hub` package's dependencies: so nothing here imports engines.base until it is asked for.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engines.base import Engine, LaunchContext, LaunchSpec, Upstream

__all__ = ["Engine", "LaunchContext", "LaunchSpec", "Upstream", "available_engines", "get_engine"]


def __getattr__(name: str) -> Any:
    """The engine surface (Engine, LaunchContext, LaunchSpec, Upstream), imported on first use."""
    if name in ("Engine", "LaunchContext", "LaunchSpec", "Upstream"):
        import engines.base

        return getattr(engines.base, name)
    raise AttributeError(f"module 'engines' has no attribute {name!r}")


@cache
def _registered() -> dict[str, Engine]:
    from engines.base import Engine

    found: dict[str, Engine] = {}
    for ep in entry_points(group="hub.engines"):
        engine = ep.load()
        if not isinstance(engine, Engine):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not an engines.base.Engine")
        found[ep.name] = engine
    return found


def available_engines() -> list[str]:
    """Names of every registered engine, built-in ones first."""
    builtin = ["vllm", "diffusers", "command", "openai"]
    names = list(_registered())
    return [n for n in builtin if n in names] + sorted(n for n in names if n not in builtin)


def get_engine(name: str) -> Engine:
    """The engine registered under `name`."""
    return _registered()[name]
