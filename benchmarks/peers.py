"""The servers the router-overhead benchmark compares, each started for one run: the hub (with the test responder
as its `command` engine, the upstream of every target), a bare ASGI pass-through (benchmarks/bare_proxy.py),
vllm-router and LiteLLM's proxy. The two peers live in their own environments under <envs_dir> (never the hub's):
`python -m benchmarks.router_overhead --setup-litellm --setup-vllm-router` makes them.

Pinning (where the machine has two cores or more): every proxy and its threads on the last core, the upstream and
the load generator on the others, so that a proxy's cost shows as latency and not as CPU taken from the upstream.
A child inherits its parent's cores: the hub starts on the proxy core, and its engine is moved to the load side
once it runs (its pid from GET /hub/models).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from hub import locks
from hub.procs import free_port, stop_process, wait_http

ROOT = Path(__file__).resolve().parent.parent
RESPONDER = ROOT / "tests" / "responder.py"
MODEL = "bench"
PEERS = ("bare", "vllm-router", "litellm")

# LiteLLM must not reach the network: bundled cost map, no telemetry. Like the hub here, it runs without an API
# key (loopback only), so that neither side pays for authentication.
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
               "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "True",
               "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}


def envs_dir() -> Path:
    """Where engine (and tool) environments live: HUB_ENVS_DIR, else .hub/envs at the repo root."""
    return Path(os.environ.get("HUB_ENVS_DIR") or ROOT / ".hub" / "envs")


def litellm_python() -> Path:
    """The Python of LiteLLM's own environment."""
    return envs_dir() / "litellm" / "bin" / "python"


def vllm_router_exe() -> Path:
    """vllm-router's console script in its own environment."""
    return envs_dir() / "vllm-router" / "bin" / "vllm-router"


def setup_litellm() -> Path:
    """Make <envs_dir>/litellm exactly locks/litellm.txt (idempotent)."""
    locks.install(envs_dir() / "litellm", "litellm")
    return litellm_python()


def setup_vllm_router() -> Path:
    """Make <envs_dir>/vllm-router exactly locks/vllm-router.txt (idempotent)."""
    locks.install(envs_dir() / "vllm-router", "vllm-router")
    return vllm_router_exe()


def missing(peer: str) -> str | None:
    """Why a peer cannot run here (its environment is missing), or None."""
    need = {"litellm": (litellm_python(), "--setup-litellm"), "vllm-router": (vllm_router_exe(), "--setup-vllm-router")}
    if peer in need and not need[peer][0].exists():
        path, flag = need[peer]
        return f"its environment is missing ({path}): run `python -m benchmarks.router_overhead {flag}`"
    return None


# ---- cores ----

@dataclass(frozen=True)
class Cores:
    """Where proxies run, and where the upstream and the load generator run; None: not pinned."""

    proxy: frozenset[int] | None = None
    load: frozenset[int] | None = None


def plan_cores(pin: bool = True) -> Cores:
    """The last core for proxies, the others for the upstream and the load generator (two cores or more)."""
    cores = sorted(os.sched_getaffinity(0))
    if not pin or len(cores) < 2:
        return Cores()
    return Cores(frozenset(cores[-1:]), frozenset(cores[:-1]))


def pin_tree(pid: int, cores: frozenset[int] | None) -> None:
    """Move a process, every thread of it and its children to `cores`."""
    if not cores:
        return
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in procs:
        for t in p.threads():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(t.id, cores)


def affinity(pid: int) -> str:
    """The cores a process may run on, as text ("1", "0-1")."""
    cores = sorted(os.sched_getaffinity(pid))
    return str(cores[0]) if len(cores) == 1 else ",".join(map(str, cores))


def _popen(args: list[str], log: Path, cores: frozenset[int] | None, **kw) -> subprocess.Popen:
    """Start a server in its own session, on `cores` from its first instruction (threads inherit them)."""
    pre = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=pre, **kw)


@dataclass
class Server:
    """A started target: its /v1 URL and its main pid."""

    name: str
    v1: str
    pid: int


# ---- the servers ----

@contextlib.contextmanager
def started_hub(tmp: Path, cores: Cores) -> Iterator[tuple[Server, Server]]:
    """A `hub serve` with the test responder as a `command` engine, streaming without delay between chunks; yields
    (the hub, its engine as the direct target)."""
    port = free_port()
    cmd = [sys.executable, str(RESPONDER), "--port", "{port}", "--model", MODEL, "--chunk-delay", "0"]
    cfg = tmp / "models.toml"
    cfg.write_text(
        f'[hub]\nport = {port}\nstate_dir = {json.dumps(str(tmp / "state"))}\n\n'
        f'[models.{MODEL}]\ntype = "text"\nengine = "command"\n'
        f'[models.{MODEL}.args]\ncommand = {json.dumps(cmd)}\nhealth = "/health"\n'
    )
    log = tmp / "hub.log"
    proc = _popen([sys.executable, "-m", "hub.cli", "serve", "--config", str(cfg), "--no-ui"], log, cores.proxy,
                  cwd=ROOT, env={**os.environ, "HUB_STATE_DIR": str(tmp / "state")})
    try:
        root = f"http://127.0.0.1:{port}"
        wait_http(root + "/health", proc, 60, log)
        httpx.post(f"{root}/hub/models/{MODEL}/load", timeout=60).raise_for_status()
        entry = next(m for m in httpx.get(root + "/hub/models", timeout=10).json()["data"] if m["id"] == MODEL)
        engine = entry["process"]
        pin_tree(proc.pid, cores.proxy)
        pin_tree(engine["pid"], cores.load)
        yield Server("hub", root + "/v1", proc.pid), Server("direct", f"http://127.0.0.1:{engine['port']}/v1",
                                                           engine["pid"])
    finally:
        stop_process(proc)


def _serving(name: str, proc: subprocess.Popen, port: int, health: str, timeout: float, log: Path, cores: Cores
             ) -> Iterator[Server]:
    """A started proxy, once its health path answers, pinned to the proxies' cores; stopped when done."""
    try:
        wait_http(f"http://127.0.0.1:{port}{health}", proc, timeout, log)
        pin_tree(proc.pid, cores.proxy)
        yield Server(name, f"http://127.0.0.1:{port}/v1", proc.pid)
    finally:
        stop_process(proc)


@contextlib.contextmanager
def started_bare(tmp: Path, engine_v1: str, cores: Cores) -> Iterator[Server]:
    """The bare ASGI pass-through in front of the engine."""
    port = free_port()
    log = tmp / "bare.log"
    proc = _popen([sys.executable, "-m", "benchmarks.bare_proxy", "--upstream", engine_v1.removesuffix("/v1"),
                   "--port", str(port)], log, cores.proxy, cwd=ROOT)
    yield from _serving("bare", proc, port, "/health", 30, log, cores)


@contextlib.contextmanager
def started_vllm_router(tmp: Path, engine_v1: str, cores: Cores) -> Iterator[Server]:
    """vllm-router (round robin over one worker, the engine) with its metrics on a free port."""
    port, metrics = free_port(), free_port()
    log = tmp / "vllm-router.log"
    proc = _popen([str(vllm_router_exe()), "--host", "127.0.0.1", "--port", str(port),
                   "--worker-urls", engine_v1.removesuffix("/v1"), "--policy", "round_robin",
                   "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics)], log, cores.proxy, cwd=tmp)
    yield from _serving("vllm-router", proc, port, "/health", 60, log, cores)


@contextlib.contextmanager
def started_litellm(tmp: Path, engine_v1: str, cores: Cores) -> Iterator[Server]:
    """LiteLLM's proxy, routing model `bench` to the engine."""
    port = free_port()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {engine_v1}\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  turn_off_message_logging: true\n"
    )
    log = tmp / "litellm.log"
    exe = litellm_python().parent / "litellm"
    proc = _popen([str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)], log, cores.proxy,
                  cwd=tmp, env={**os.environ, **LITELLM_ENV})
    yield from _serving("litellm", proc, port, "/health/liveliness", 180, log, cores)


STARTERS = {"bare": started_bare, "vllm-router": started_vllm_router, "litellm": started_litellm}
