"""What a ray model asks of the Ray cluster, and how the cluster's nodes answer it: pure, so it is unit-tested
without Ray (hub/runtimes/ray.py talks to Ray and hands the nodes' resources in here as plain dicts).

Rules:
- A model's engine actor asks for `num_gpus` = the number of GPUs in its `gpus` list (Ray picks the devices and
  sets CUDA_VISIBLE_DEVICES; `gpus = "all"` has no count and is refused), `memory` = its `memory_gb` in bytes (Ray's
  own memory resource: every node advertises it by itself, and every task or actor on the cluster, the hub's or
  not, counts against the same number, so nothing is counted twice), and its `resources` table: custom resources
  (labels such as `box-a = 1`), and `CPU`, which becomes num_cpus (default 0: cores are not reserved).
- A request fits a node when every amount it asks for is at most what the node has: in total (it could run there
  once the node is free) or available now (it runs there at once). Nodes that are not alive are left out.
- The messages name each node by a short id, its address and its custom resources (nodes of one machine share an
  address), and say what is missing.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.config import RAY_HOST, Registry

GB = 1024**3
# resources every node has, or that Ray makes up: not labels a person gave a node
BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")
RESERVED = {"GPU": "set the model's gpus instead (a list: [0, 1] asks for 2)",
            "memory": "set the model's memory_gb instead",
            "object_store_memory": "the engine does not use Ray's object store"}


@dataclass(frozen=True)
class Request:
    """The resources a model's engine actor asks Ray for."""

    num_cpus: float = 0.0
    num_gpus: float = 0.0
    memory: int = 0  # bytes (Ray's `memory` resource)
    custom: Mapping[str, float] = field(default_factory=dict)

    def amounts(self) -> dict[str, float]:
        """Resource name -> amount, as Ray's nodes list them (zero amounts left out)."""
        out = {"CPU": self.num_cpus, "GPU": self.num_gpus, "memory": float(self.memory), **self.custom}
        return {k: v for k, v in out.items() if v}

    def describe(self) -> str:
        """"GPU 2, memory 3.5 GB, box-a 1" (or "nothing": any node will do)."""
        return ", ".join(amount(k, v) for k, v in self.amounts().items()) or "nothing"

    def options(self) -> dict[str, Any]:
        """The keyword arguments of Ray's `.options()` that ask for it."""
        kw: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "resources": dict(self.custom)}
        if self.memory:
            kw["memory"] = self.memory
        return kw


def amount(name: str, value: float) -> str:
    """One resource for people: memory in GB, others as counts."""
    if name in ("memory", "object_store_memory"):
        return f"{name} {value / GB:.3g} GB"
    return f"{name} {value:g}"


def request_of(registry: Registry, model_id: str) -> Request:
    """What a ray model's actor asks for (see the module's rules)."""
    m = registry.models[model_id]
    custom = dict(m.resources)
    cpus = custom.pop("CPU", 0.0)
    gpus = len(m.gpus) if isinstance(m.gpus, list) else 0
    memory = int((m.memory_gb or 0) * GB)
    return Request(num_cpus=cpus, num_gpus=float(gpus), memory=memory, custom=custom)


def ray_installed() -> bool:
    """Whether Ray can be imported here (without importing it)."""
    return importlib.util.find_spec("ray") is not None


def problems(registry: Registry) -> list[str]:
    """The ray runtime's checks of a registry, as "key.path: message" lines."""
    out: list[str] = []
    if RAY_HOST in registry.hosts:
        out.append(f"hosts.{RAY_HOST}: {RAY_HOST!r} is the name of the Ray cluster (the host of ray models): "
                   "rename this host")
    if any(registry.runtime_of(mid) == "ray" for mid in registry.models) and not ray_installed():
        first = next(mid for mid in registry.models if registry.runtime_of(mid) == "ray")
        out.append(f"models.{first}.runtime: the ray runtime needs Ray in the hub's environment: pip install "
                   "'hub[ray]' (in a checkout: make ray)")
    for mid, m in registry.models.items():
        at = f"models.{mid}"
        if registry.runtime_of(mid) != "ray":
            if m.resources:
                out.append(f"{at}.resources: only the ray runtime reads resources (set runtime = \"ray\")")
            if RAY_HOST in m.hosts:
                out.append(f"{at}.host: host {RAY_HOST!r} is the Ray cluster: set runtime = \"ray\" on the model")
            continue
        if m.hosts != [RAY_HOST]:
            out.append(f"{at}.host: a ray model is placed by the Ray cluster: leave host out and name the nodes it "
                       "may run on with resources = {...} (labels the nodes were started with)")
        if m.gpus == "all":
            out.append(f"{at}.gpus: the ray runtime asks Ray for a number of GPUs: list as many as the engine needs "
                       "(gpus = [0, 1] asks for 2; Ray picks which)")
        for key in m.resources:
            if key in RESERVED:
                out.append(f"{at}.resources.{key}: {RESERVED[key]}")
    return out


@dataclass(frozen=True)
class Node:
    """One node of the cluster, from `ray.nodes()` and the available resources per node."""

    id: str
    address: str
    alive: bool
    total: Mapping[str, float]
    available: Mapping[str, float]

    @property
    def labels(self) -> list[str]:
        """Its custom resources (the `--resources` it was started with)."""
        return sorted(k for k in self.total if k not in BUILTIN and not k.startswith(("node:", "accelerator_type:")))

    def name(self) -> str:
        """"node 1a2b3c4d (10.0.0.5, box-a)": a short id, its address, its labels."""
        return f"node {self.id[:8]} ({', '.join([self.address, *self.labels])})"

    def lacks(self, request: Request, now: bool = False) -> dict[str, float]:
        """What the node lacks of the request: resource -> the amount it has (in total, or available `now`)."""
        have = self.available if now else self.total
        return {k: have.get(k, 0.0) for k, v in request.amounts().items() if have.get(k, 0.0) + 1e-9 < v}


def nodes_of(listed: Iterable[Mapping[str, Any]], available: Mapping[str, Mapping[str, float]]) -> list[Node]:
    """Nodes from `ray.nodes()` entries and `available_resources_per_node()` (node id -> resources)."""
    return [Node(n["NodeID"], n.get("NodeManagerAddress", "?"), bool(n.get("Alive")), dict(n.get("Resources") or {}),
                 dict(available.get(n["NodeID"], {}))) for n in listed]


@dataclass(frozen=True)
class Room:
    """Where on the cluster a request fits: on a node now, or on nodes once they are free."""

    fits_now: bool
    could_host: frozenset[str]  # ids of alive nodes that have it all in total

    @property
    def ever(self) -> bool:
        """Whether some alive node could run it once free."""
        return bool(self.could_host)


def room(request: Request, nodes: Iterable[Node]) -> Room:
    """Where `request` fits among the alive nodes."""
    alive = [n for n in nodes if n.alive]
    return Room(fits_now=any(not n.lacks(request, now=True) for n in alive),
                could_host=frozenset(n.id for n in alive if not n.lacks(request)))


def unplaced(model_id: str, request: Request, nodes: Iterable[Node], waited: float) -> str:
    """Why a model's actor found no node within `waited` seconds: what each alive node lacks, and what to do."""
    alive = [n for n in nodes if n.alive]
    asked = request.describe()
    if not alive:
        return f"model {model_id!r} asks the Ray cluster for {asked}, and the cluster has no alive node"
    if not room(request, alive).ever:
        lacks = "; ".join(f"{n.name()} has {', '.join(amount(k, v) for k, v in n.lacks(request).items())}"
                          for n in alive)
        flags = start_flags(request)
        return (f"model {model_id!r} cannot be placed: no node of the Ray cluster has {asked} (waited {waited:g}s; "
                f"{lacks}). Add a node that has it (`ray start --address=HEAD {flags}`) or ask for less")
    busy = "; ".join(f"{n.name()} has {', '.join(amount(k, v) for k, v in n.lacks(request, now=True).items())} free"
                     for n in alive if not n.lacks(request))
    return (f"model {model_id!r} cannot be placed: the Ray nodes that have {asked} are using it (waited {waited:g}s "
            f"for them; {busy}): other Ray work, or models the hub may not stop (pinned), hold it; retry later")


def start_flags(request: Request) -> str:
    """The `ray start` flags of a node that has what `request` asks for."""
    flags = [f"--num-gpus={request.num_gpus:g}"] if request.num_gpus else []
    flags += [f"--num-cpus={request.num_cpus:g}"] if request.num_cpus else []
    flags += [f"--memory={request.memory}"] if request.memory else []
    if request.custom:
        labels = {k: int(v) if float(v).is_integer() else v for k, v in request.custom.items()}
        flags.append(f"--resources='{json.dumps(labels)}'")
    return " ".join(flags)
