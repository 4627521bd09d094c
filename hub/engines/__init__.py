"""Engines: one module each, with the same small surface (hub.engines.base.Engine).

Every engine, the built-in ones included, is found through the `hub.engines` entry-point group, so a third-party
package adds an engine exactly as this project adds its own (see pyproject.toml).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from hub.engines.base import Engine, LaunchContext, LaunchSpec, Upstream

__all__ = ["Engine", "LaunchContext", "LaunchSpec", "Upstream", "available_engines", "get_engine"]


@cache
def _registered() -> dict[str, Engine]:
    found: dict[str, Engine] = {}
    for ep in entry_points(group="hub.engines"):
        engine = ep.load()
        if not isinstance(engine, Engine):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not an hub.engines.base.Engine")
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
