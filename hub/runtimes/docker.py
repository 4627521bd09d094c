"""The docker runtime: each engine is a container named `hub-<id>` on a Docker host (the local daemon or a
`[hosts.<name>]` one), driven through the docker SDK. The SDK blocks, so every call runs in a worker thread.

Rules:
- The container itself (command, mounts, GPUs, labels) is `hub/runtimes/container.py`'s pure `container_config`.
  A container named `hub-<id>` without the label `hub=1` is not the hub's: start refuses to touch it.
- Network: `publish` (default) publishes the engine's port on the host's `publish_address` (127.0.0.1 unless
  configured); `host` runs the container in the host's network. Either way the hub reaches the engine at the
  host's `address` and the port the manager chose.
- GPUs: a host without the NVIDIA runtime is an error for a spec that asks for GPUs, never a silent CPU run.
- Stop: `docker stop` (SIGTERM through the init process, SIGKILL after the grace period), then remove. The
  container's log is kept first in `<state_dir>/logs/<model>.log`, so `hub logs` still works afterwards.
- Restart safety: at hub start, `adopt` takes over a running container of the model whose config hash matches;
  stopped containers of the hub, and running ones with another config, are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from docker.errors import APIError, DockerException, NotFound

import docker
from hub.config import Registry
from hub.engines.base import LaunchSpec
from hub.errors import RuntimeFailure
from hub.runtimes.base import Handle, Runtime, local_gpu_memory_gb
from hub.runtimes.container import LABEL, container_config, container_name
from hub.runtimes.logs import save_log, tail_file

log = logging.getLogger("hub.docker")
T = TypeVar("T")

POLL_SECONDS = 1.0
CONNECTION_ERRORS = (DockerException, requests.RequestException)


def build_hint(image: str) -> str:
    """How to get an engine image onto a host."""
    if image.startswith("hub-diffusers"):
        return f"build it with `hub build` (docker/diffusers/Dockerfile) or load it there (docker save {image} | " \
               f"docker -H HOST load)"
    return f"pull it on that host: `docker pull {image}`"


def explain_api_error(model_id: str, host: str, err: APIError) -> str:
    """A message for a docker API error at container start, saying what to do."""
    text = str(err.explanation or err)
    low = text.lower()
    if "port is already allocated" in low or "address already in use" in low:
        return (f"the port of model {model_id!r} is in use on docker host {host!r} ({text}); retry: the hub "
                "picks another free port on each start")
    if "nvidia" in low or "could not select device driver" in low:
        return (f"model {model_id!r} asks for GPUs but docker host {host!r} cannot provide them ({text}): install "
                "the NVIDIA Container Toolkit there (`nvidia-ctk runtime configure --runtime=docker`, then restart "
                "docker)")
    if "bind source path does not exist" in low or "invalid mount" in low:
        return (f"a folder mounted into model {model_id!r}'s container does not exist on docker host {host!r} "
                f"({text}): a local model source must exist at the same path there")
    return f"docker host {host!r} could not start the container of model {model_id!r}: {text}"


class DockerRuntime(Runtime):
    """Engines as containers on one Docker host."""

    name = "docker"

    def __init__(self, registry: Registry, host: str = "local") -> None:
        self.registry = registry
        self.host = host
        self.cfg = registry.host_config(host)
        self.log_dir = registry.state_dir / "logs"
        self._client: docker.DockerClient | None = None
        self._connect_lock = asyncio.Lock()
        self._containers: dict[str, Any] = {}  # model id -> Container of its latest run
        self._swept = False

    # ---- connection ----

    @property
    def where(self) -> str:
        """The daemon's address, as the person configured it."""
        return self.cfg.docker or os.environ.get("DOCKER_HOST") or "the local socket (unix:///var/run/docker.sock)"

    def _connect(self) -> docker.DockerClient:
        url = self.cfg.docker
        try:
            if url:
                client = docker.DockerClient(base_url=url, use_ssh_client=url.startswith("ssh://"), timeout=60)
            else:
                client = docker.from_env(timeout=60)
            client.ping()
        except CONNECTION_ERRORS as err:
            raise RuntimeFailure(self._unreachable(err)) from None
        return client

    def _unreachable(self, err: Exception) -> str:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        flag = f" -H {self.cfg.docker}" if self.cfg.docker else ""
        return (f"cannot reach the Docker daemon of host {self.host!r} at {self.where} ({reason}): start dockerd "
                f"there, check the [hosts.{self.host}] docker setting, then try `docker{flag} info`")

    async def client(self) -> docker.DockerClient:
        """The docker client of this host, connected on first use (RuntimeFailure when the daemon is down)."""
        async with self._connect_lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._connect)
            return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a blocking SDK call in a thread; connection failures become RuntimeFailure."""
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except (NotFound, APIError, RuntimeFailure):
            raise
        except CONNECTION_ERRORS as err:
            raise RuntimeFailure(self._unreachable(err)) from None

    # ---- the Runtime surface ----

    async def gpu_memory_gb(self) -> dict[int, float]:
        """The GPUs of this machine when the daemon is local; a remote host's are not known ({})."""
        url = self.cfg.docker or os.environ.get("DOCKER_HOST") or ""
        return await asyncio.to_thread(local_gpu_memory_gb) if not url or url.startswith("unix://") else {}

    async def holds(self, spec: LaunchSpec) -> bool:
        """Whether the daemon has the spec's image (one API call; RuntimeFailure when it cannot be reached)."""
        if not spec.image:
            return False
        client = await self.client()
        try:
            await self._call(client.images.get, spec.image)
        except (NotFound, APIError):
            return False
        return True

    def container_config(self, model_id: str, spec: LaunchSpec, port: int) -> dict[str, Any]:
        """This host's container settings for a model (see `container_config`)."""
        return container_config(model_id, spec, port, self.cfg, os.environ.get("HF_TOKEN") or None)

    def _handle(self, model_id: str, container: Any, port: int) -> Handle:
        self._containers[model_id] = container
        return Handle(model_id, f"http://{self.cfg.address}:{port}", ref=container,
                      info={"container": container.name, "id": container.short_id, "host": self.host,
                            "image": container.attrs.get("Config", {}).get("Image"), "port": port})

    async def start(self, model_id: str, spec: LaunchSpec, port: int) -> Handle:
        client = await self.client()
        kw = self.container_config(model_id, spec, port)
        image = kw["image"]
        try:
            await self._call(client.images.get, image)
        except NotFound:
            raise RuntimeFailure(f"image {image!r} of model {model_id!r} is not on docker host {self.host!r}: "
                                 f"{build_hint(image)}") from None
        if spec.gpus:
            info = await self._call(client.info)
            if "nvidia" not in (info.get("Runtimes") or {}):
                raise RuntimeFailure(
                    f"model {model_id!r} asks for GPUs (gpus = {spec.gpus!r}) but docker host {self.host!r} has no "
                    "NVIDIA runtime: install the NVIDIA Container Toolkit there (`nvidia-ctk runtime configure "
                    "--runtime=docker`, then restart docker)")
        await self._remove_stale(client, model_id)
        self._write_log_header(model_id, spec, kw)
        try:
            container = await self._call(client.containers.create, **kw)
        except APIError as err:
            raise RuntimeFailure(explain_api_error(model_id, self.host, err)) from None
        try:
            await self._call(container.start)
            await self._call(container.reload)
        except (APIError, RuntimeFailure) as err:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await asyncio.to_thread(container.remove, force=True)
            if isinstance(err, RuntimeFailure):
                raise
            raise RuntimeFailure(explain_api_error(model_id, self.host, err)) from None
        log.info("%s: started container %s (%s) on host %s", model_id, container.name, container.short_id, self.host)
        return self._handle(model_id, container, port)

    async def _remove_stale(self, client: docker.DockerClient, model_id: str) -> None:
        """Remove a leftover container of the model (a crash, a killed hub); refuse to touch someone else's."""
        name = container_name(model_id)
        try:
            old = await self._call(client.containers.get, name)
        except NotFound:
            return
        if old.labels.get(LABEL) != "1":
            raise RuntimeFailure(f"a container named {name!r} exists on docker host {self.host!r} and was not "
                                 f"started by the hub: remove it (`docker rm -f {name}`) or rename the model")
        log.info("%s: removing leftover container %s (%s)", model_id, name, old.status)
        with contextlib.suppress(NotFound):
            await self._call(old.remove, force=True)

    def _write_log_header(self, model_id: str, spec: LaunchSpec, kw: dict[str, Any]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{model_id}.log").open("w") as f:
            f.write(f"# hub: {time.strftime('%Y-%m-%d %H:%M:%S')} starting {model_id} as container {kw['name']} "
                    f"on docker host {self.host}: {kw['image']} {' '.join(kw['command'])}\n")

    def _save_log(self, model_id: str, container: Any) -> None:
        """Keep the container's whole log in the state dir before the container goes."""
        try:
            text = container.logs().decode(errors="replace")
        except (*CONNECTION_ERRORS, RuntimeFailure):
            return
        save_log(self.log_dir, model_id, text)

    async def alive(self, handle: Handle) -> bool:
        try:
            await self._call(handle.ref.reload)
        except (NotFound, RuntimeFailure):
            return False
        return handle.ref.status in ("running", "created", "restarting")

    async def wait_exit(self, handle: Handle) -> str:
        """Poll the container (each second) until it is no longer running; returns why it ended."""
        c = handle.ref
        failures = 0
        while True:
            try:
                await self._call(c.reload)
                failures = 0
            except NotFound:
                return "container was removed"
            except (RuntimeFailure, APIError):
                failures += 1
                if failures >= 30:
                    return f"lost contact with docker host {self.host!r}"
            else:
                if c.status in ("exited", "dead"):
                    state = c.attrs.get("State", {})
                    await asyncio.to_thread(self._save_log, handle.model_id, c)
                    if state.get("OOMKilled"):
                        return "was killed: out of memory"
                    why = f"exited with code {state.get('ExitCode')}"
                    if "address already in use" in self.logs(handle.model_id, 50).lower():
                        why += f" (its port {handle.info.get('port')} is in use on docker host {self.host!r})"
                    return why
            await asyncio.sleep(POLL_SECONDS)

    async def stop(self, handle: Handle, timeout: float) -> None:
        """docker stop (grace period `timeout`, then SIGKILL), keep the log, remove the container."""
        c = handle.ref
        with contextlib.suppress(NotFound):
            await self._call(c.stop, timeout=max(1, math.ceil(timeout)))
        await asyncio.to_thread(self._save_log, handle.model_id, c)
        with contextlib.suppress(NotFound):
            await self._call(c.remove, force=True)
        log.info("%s: stopped and removed container %s", handle.model_id, c.name)

    def logs(self, model_id: str, tail: int = 100) -> str:
        c = self._containers.get(model_id)
        if c is not None:
            try:
                text = c.logs(tail=tail).decode(errors="replace")
                return text
            except NotFound:
                self._containers.pop(model_id, None)
            except CONNECTION_ERRORS:
                pass
        return tail_file(self.log_dir / f"{model_id}.log", tail)

    async def adopt(self, model_id: str, launch: Callable[[int], LaunchSpec]) -> tuple[Handle, LaunchSpec] | None:
        """Take over the model's running container if its settings still match the registry; remove the hub's
        stopped containers (once per host) and a container whose settings changed."""
        client = await self.client()
        if not self._swept:
            self._swept = True
            stale = await self._call(client.containers.list, all=True,
                                     filters={"label": f"{LABEL}=1", "status": ["exited", "created", "dead"]})
            for c in stale:
                log.info("removing stopped container %s on host %s", c.name, self.host)
                with contextlib.suppress(NotFound):
                    await self._call(c.remove, force=True)
        try:
            c = await self._call(client.containers.get, container_name(model_id))
        except NotFound:
            return None
        if c.labels.get(LABEL) != "1" or c.labels.get("hub.model") != model_id:
            return None
        try:
            port = int(c.labels.get("hub.port", ""))
            spec = launch(port)
            kw = self.container_config(model_id, spec, port)
        except (ValueError, RuntimeFailure) as err:
            log.warning("%s: not adopting container %s: %s", model_id, c.name, err)
            kw = None
        if c.status != "running" or kw is None or kw["labels"]["hub.config-hash"] != c.labels.get("hub.config-hash"):
            log.info("%s: removing container %s (%s, settings %s)", model_id, c.name, c.status,
                     "unchanged" if kw and kw["labels"]["hub.config-hash"] == c.labels.get("hub.config-hash")
                     else "changed")
            with contextlib.suppress(NotFound):
                await self._call(c.stop, timeout=max(1, math.ceil(self.registry.hub.stop_timeout)))
                await self._call(c.remove, force=True)
            return None
        log.info("%s: adopting running container %s (%s) on host %s", model_id, c.name, c.short_id, self.host)
        return self._handle(model_id, c, port), spec

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._client.close)
            self._client = None
