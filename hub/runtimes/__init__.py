"""Runtimes run engines: `process` (a local subprocess), `docker` (a container on a local or remote host) and `ray`
(a detached actor on a node of a Ray cluster)."""

from __future__ import annotations

from hub.runtimes.base import Handle, Runtime

__all__ = ["Handle", "Runtime", "make_runtime"]


def make_runtime(name: str, registry, host: str = "local") -> Runtime:
    """The runtime called `name`, for models placed on `host`."""
    if name == "process":
        from hub.runtimes.process import ProcessRuntime

        return ProcessRuntime(registry.state_dir / "logs", registry.envs_dir)
    if name == "docker":
        from hub.runtimes.docker import DockerRuntime

        return DockerRuntime(registry, host)
    if name == "ray":  # imports Ray: only a registry with ray models gets here
        from hub.runtimes.ray import RayRuntime

        return RayRuntime(registry)
    raise ValueError(f"unknown runtime {name!r}")
