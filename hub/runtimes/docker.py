"""The docker runtime: each engine is a container named `hub-<id>` on a Docker host (the local daemon or a
`[hosts.<name>]` one), driven through the docker SDK. The SDK blocks, so every call runs in a worker thread.

Rules:
- Labels: `hub=1`, `hub.model=<id>`, `hub.port=<engine port>`, `hub.config-hash=<hash of the container's
  settings>`. A container named `hub-<id>` without `hub=1` is not the hub's: start refuses to touch it.
- Network: `publish` (default) publishes the engine's port on the host's `publish_address` (127.0.0.1 unless
  configured); `host` runs the container in the host's network. Either way the hub reaches the engine at the
  host's `address` and the port the manager chose.
- Command: the spec's command line (when it has one) replaces the image's entrypoint's arguments; then the listen
  address (0.0.0.0, inside the container) with the spec's bind flag, then the spec's arguments.
- Mounts (decided here and nowhere else): the Hugging Face cache (`hf_cache`, a path on the Docker host) at
  /root/.cache/huggingface, and the spec's model_path (a local model folder) read-only at the same path. HF_TOKEN
  is passed when set.
- GPUs: `gpus = "all"` or a list of ids become device requests under the NVIDIA runtime; a host without that
  runtime is an error, never a silent CPU run. A spec asking for shared memory gets ipc=host; every container
  gets an init process.
- Stop: `docker stop` (SIGTERM through the init process, SIGKILL after the grace period), then remove. The
  container's log is kept first in `<state_dir>/logs/<model>.log`, so `hub logs` still works afterwards.
- Restart safety: at hub start, `adopt` takes over a running container of the model whose config hash matches;
  stopped containers of the hub, and running ones with another config, are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
from docker.errors import APIError, DockerException, NotFound
from docker.types import DeviceRequest

import docker
from hub.config import HostConfig, Registry
from hub.engines.base import LaunchSpec
from hub.errors import RuntimeFailure
from hub.runtimes.base import Handle, Runtime, local_gpu_memory_gb
from hub.runtimes.process import tail_file

log = logging.getLogger("hub.docker")
T = TypeVar("T")

HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
LABEL = "hub"
POLL_SECONDS = 1.0
CONNECTION_ERRORS = (DockerException, requests.RequestException)


def container_name(model_id: str) -> str:
    """The name of a model's container (docker names allow the model id's characters except ':')."""
    return "hub-" + model_id.replace(":", "-")


def build_hint(image: str) -> str:
    """How to get an engine image onto a host."""
    if image.startswith("hub-diffusers"):
        return f"build it with `hub build` (docker/diffusers/Dockerfile) or load it there (docker save {image} | " \
               f"docker -H HOST load)"
    return f"pull it on that host: `docker pull {image}`"


def container_config(model_id: str, spec: LaunchSpec, port: int, host: HostConfig,
                     hf_token: str | None = None) -> dict[str, Any]:
    """The keyword arguments of `containers.create` for a model: image, command, labels, env, mounts, GPUs,
    ipc, init and network. Pure, so it is unit-tested against vLLM's documented `docker run` line."""
    if not spec.image:
        raise RuntimeFailure(f"model {model_id!r} has no image for the docker runtime: set `image = \"...\"` in its "
                             "table (engines vllm and diffusers have one)")
    env = {"PYTHONUNBUFFERED": "1", **spec.environ}
    if hf_token:
        env["HF_TOKEN"] = hf_token
    volumes: dict[str, dict[str, str]] = {
        str(Path(host.hf_cache).expanduser()): {"bind": HF_CACHE_IN_CONTAINER, "mode": "rw"},
    }
    if spec.model_path:
        volumes[spec.model_path] = {"bind": spec.model_path, "mode": "ro"}
    kw: dict[str, Any] = {
        "image": spec.image,
        "command": container_command(spec),
        "name": container_name(model_id),
        "environment": env,
        "volumes": volumes,
        "init": True,
    }
    if spec.gpus:
        kw["runtime"] = "nvidia"  # --runtime nvidia --gpus all | --gpus '"device=0,1"'
        req = (DeviceRequest(count=-1, capabilities=[["gpu"]]) if spec.gpus == "all"
               else DeviceRequest(device_ids=[str(i) for i in spec.gpus], capabilities=[["gpu"]]))
        kw["device_requests"] = [req]
    if spec.shared_memory:
        kw["ipc_mode"] = "host"
    if host.network == "host":
        kw["network_mode"] = "host"
    else:
        kw["ports"] = {f"{port}/tcp": (host.publish_address, port)}
    kw["labels"] = {LABEL: "1", "hub.model": model_id, "hub.port": str(port), "hub.config-hash": config_hash(kw)}
    return kw


def container_command(spec: LaunchSpec) -> list[str]:
    """The container's command: the spec's command line, if any, then the listen address and the arguments."""
    bind = [spec.bind_flag, "0.0.0.0"] if spec.bind_flag else []
    return [*(spec.command or []), *bind, *spec.args]


def config_hash(kw: dict[str, Any]) -> str:
    """A short hash of a container's settings (the HF token's value left out), to tell whether a running container
    still matches the registry."""
    data = {k: v for k, v in kw.items() if k != "labels"}
    data["environment"] = {k: ("set" if k == "HF_TOKEN" else v) for k, v in kw.get("environment", {}).items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        path = self.log_dir / f"{model_id}.log"
        header = ""
        with contextlib.suppress(OSError):
            header = next((ln for ln in path.read_text().splitlines(keepends=True) if ln.startswith("# hub:")), "")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(header + text)

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
