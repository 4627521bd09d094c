"""The container of a model, apart from the runtime that runs it: `container_config` turns an engine's LaunchSpec
into the keyword arguments of the docker SDK's `containers.create` (image, command, labels, env, mounts, GPUs, ipc,
init, network). Pure, so it is unit-tested against vLLM's documented `docker run` line without a daemon.

Rules:
- Command: the spec's command line (when it has one) replaces the image's entrypoint's arguments; then the listen
  address (0.0.0.0, inside the container) with the spec's bind flag, then the spec's arguments.
- Mounts (decided here and nowhere else): the Hugging Face cache (`hf_cache`, a path on the Docker host) at
  /root/.cache/huggingface, and the spec's model_path (a local model folder) and extra_paths (its LoRA adapters'
  folders) read-only at the same paths. HF_TOKEN is passed when set.
- GPUs: `gpus = "all"` or a list of ids become device requests under the NVIDIA runtime. A spec asking for shared
  memory gets ipc=host; every container gets an init process.
- Labels: `hub=1`, `hub.model=<id>`, `hub.port=<engine port>`, `hub.config-hash=<hash of these settings>`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from docker.types import DeviceRequest

from hub.config import HostConfig
from hub.engines.base import LaunchSpec
from hub.errors import RuntimeFailure

HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
LABEL = "hub"


def container_name(model_id: str) -> str:
    """The name of a model's container (docker names allow the model id's characters except ':')."""
    return "hub-" + model_id.replace(":", "-")


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
    for path in filter(None, [spec.model_path, *spec.extra_paths]):  # the model's folder, its LoRA adapters'
        volumes[path] = {"bind": path, "mode": "ro"}
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
