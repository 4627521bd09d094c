"""What several test modules share: registry tables, clients, the demo registry, notebooks run with nbclient, the
in-memory manager's fakes and the scripted HTTP engine. Test modules import from here, never from each other."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest

from hub.config import Registry
from hub.engines.base import Engine as HubEngine
from hub.engines.base import LaunchContext, LaunchSpec
from hub.manager import Manager
from hub.registry import parse_registry
from hub.runtimes.base import Handle, Runtime
from tests.conftest import DEMO_MODELS, ENVS_DIR, ROOT, require, responder_command

# ---- registries and clients for a real `hub serve` ----

def toml_value(v: object) -> str:
    """A TOML value (JSON's strings, numbers, booleans and arrays are TOML's; tables become inline tables)."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def demo_tables(folders: dict[str, str], hub: str = 'start_timeout = "5m"', loras: bool = False) -> str:
    """The demo registry's (models.demo.toml) tables of the models in `folders` (id -> its folder under
    DEMO_MODELS), with their sources made absolute, as a registry text; their LoRA adapters only with `loras`
    (an engine started with adapters is another engine)."""
    models = tomllib.loads((ROOT / "models.demo.toml").read_text())["models"]
    lines = ["[hub]", hub]
    for mid, folder in folders.items():
        m = models[mid]
        lines += [f"[models.{mid}]", *(f"{k} = {toml_value(v)}" for k, v in m.items()
                                       if k not in ("args", "source", "loras"))]
        lines += [f"source = {json.dumps(str(DEMO_MODELS / folder))}", f"[models.{mid}.args]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in m["args"].items()]
        if loras and m.get("loras"):
            lines += [f"[models.{mid}.loras]", *(f"{k} = {toml_value(v)}" for k, v in m["loras"].items())]
    return "\n".join(lines).replace("{state_dir}/models", str(DEMO_MODELS)) + "\n"


def text_model(mid: str = "echo", *extra: str, memory: float = 1, more: str = "") -> str:
    """A registry table: the test responder (with `extra` arguments) as a text model; `more`: keys of the model."""
    return (f'[models.{mid}]\ntype = "text"\nengine = "command"\nmemory_gb = {memory}\n{more}\n'
            f"[models.{mid}.args]\ncommand = {responder_command(*extra)}\n")


def image_model(mid: str = "pix", *extra: str, memory: float = 1) -> str:
    """A registry table: the test responder as an image model."""
    return (f'[models.{mid}]\ntype = "image"\nengine = "command"\nmemory_gb = {memory}\n'
            f"[models.{mid}.args]\ncommand = {responder_command(*extra)}\n")


def client(hub, key: str = "none") -> openai.OpenAI:
    """The official openai client on a hub."""
    return openai.OpenAI(base_url=hub.v1, api_key=key, max_retries=0, timeout=60)



# ---- the demo registry and notebooks, against a real `hub serve` ----

NOTEBOOK_ARTIFACTS = ROOT / "artifacts" / "notebooks"


def demo_registry(text: str) -> str:
    """The demo registry for start_hub: its own port and state dir go, its models' folders are the shared ones."""
    text = re.sub(r"(?m)^\s*(port|state_dir)\s*=.*$", "", text)
    return text.replace("{state_dir}/models", str(DEMO_MODELS))


def require_demo(registry: str) -> dict[str, Any]:
    """The models of a demo registry (from demo_registry), once its engine environments and model folders are
    found; skip (fail under HUB_STRICT=1) naming what is missing and the command that makes it."""
    for env_name in ("vllm", "diffusers"):
        require((ENVS_DIR / env_name / "bin" / "python").exists(),
                f"engine environment {ENVS_DIR / env_name} is missing: run `make engines`")
    models = tomllib.loads(registry)["models"]
    for c in models.values():
        loras = [lora if isinstance(lora, str) else lora["source"] for lora in c.get("loras", {}).values()]
        for source in (c.get("source", ""), *loras):
            if source.startswith("/"):
                require(Path(source).exists(), f"demo model folder {source} is missing: run `make demo-models`")
    return models


def execute(name: str, tag: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, timeout: int = 900) -> Any:
    """Run notebooks/<name>.ipynb with env set for its kernel; save it as artifacts/notebooks/<name>-<tag>.ipynb."""
    import nbformat
    from nbclient import NotebookClient

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    NOTEBOOK_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        client.execute()
    finally:
        nbformat.write(nb, NOTEBOOK_ARTIFACTS / f"{name}-{tag}.ipynb")
    return nb


def outputs(nb: Any, kind: str) -> int:
    """How many outputs of a MIME type (e.g. image/png, text/html) the executed notebook holds."""
    return sum(kind in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def printed(nb: Any) -> str:
    """Everything the executed notebook's cells printed (their stdout and stderr streams), in order."""
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


# ---- the manager in memory: a fake runtime and engine ----

class FakeRuntime(Runtime):
    """Engines that become ready after `ready_after` seconds and exit when told."""

    def __init__(self, ready_after: float = 0.05, fail: set[str] | None = None) -> None:
        self.ready_after = ready_after
        self.fail = fail or set()
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.exits: dict[str, asyncio.Future] = {}

    async def start(self, model_id: str, spec: LaunchSpec, port: int) -> Handle:
        self.started.append(model_id)
        self.exits[model_id] = asyncio.get_running_loop().create_future()
        if model_id in self.fail:
            self.exits[model_id].set_result("exited with code 1")
        return Handle(model_id, f"fake://{model_id}", ref=asyncio.get_running_loop().time())

    async def alive(self, handle: Handle) -> bool:
        return not self.exits[handle.model_id].done()

    async def wait_exit(self, handle: Handle) -> str:
        return await asyncio.shield(self.exits[handle.model_id])

    async def stop(self, handle: Handle, timeout: float) -> None:
        await asyncio.sleep(0.01)
        self.stopped.append(handle.model_id)
        if not self.exits[handle.model_id].done():
            self.exits[handle.model_id].set_result("stopped")

    def logs(self, model_id: str, tail: int = 100) -> str:
        return "fake log line\n"


class FakeEngine(HubEngine):
    name: ClassVar[str] = "command"

    def __init__(self, rt: FakeRuntime) -> None:
        self.rt = rt

    def launch(self, ctx: LaunchContext) -> LaunchSpec:
        return LaunchSpec(command=["fake"])

    async def ready(self, client: httpx.AsyncClient, base_url: str, spec: LaunchSpec) -> bool:
        await asyncio.sleep(self.rt.ready_after)
        return not self.rt.exits[base_url.removeprefix("fake://")].done()


def fake_registry(models: dict[str, float], budget: float | None = None, pinned: tuple[str, ...] = (),
                  extra: dict[str, dict] | None = None, hosts: dict[str, dict] | None = None, **hub) -> Registry:
    """The registry of `make`: `command` models {id: GB}; `extra`: more keys per model (a reload's new registry)."""
    def table(m: str, gb: float) -> dict:
        own = dict((extra or {}).get(m, {}))
        args = {"command": ["x", "{port}"], **own.pop("args", {})}
        return {"type": "text", "engine": "command", "args": args, "memory_gb": gb, "pinned": m in pinned, **own}

    data = {"hub": {"memory_budget_gb": budget, "drain_timeout": 0.3, **hub} if budget else {**hub},
            "hosts": hosts or {}, "models": {m: table(m, gb) for m, gb in models.items()}}
    return parse_registry(data)


def make(models: dict[str, float], budget: float | None = None, rt: FakeRuntime | None = None,
         pinned: tuple[str, ...] = (), extra: dict[str, dict] | None = None, hosts: dict[str, dict] | None = None,
         factory=None, **hub) -> tuple[Manager, FakeRuntime]:
    """A manager of `command` models {id: GB} on fake engines; `extra`: more keys per model."""
    rt = rt or FakeRuntime()
    reg = fake_registry(models, budget, pinned, extra, hosts, **hub)
    mgr = Manager(reg, runtime_factory=factory or (lambda name, host: rt))
    for s in mgr.slots.values():
        s.engine = FakeEngine(rt)
    return mgr, rt


async def use(mgr: Manager, mid: str, hold: float = 0.0) -> None:
    lease = await mgr.acquire(mid)
    await asyncio.sleep(hold)
    lease.release()


def states(mgr: Manager) -> dict[str, str]:
    return {m: s.state.value for m, s in mgr.slots.items()}


async def until(cond, timeout: float = 5.0) -> None:
    """Let the loop run until cond() holds."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)



# ---- a scripted HTTP/1.1 engine on a real socket ----

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes, bytes], Awaitable[bool]]


class Engine:
    """A scripted HTTP/1.1 server: `script(reader, writer, head, body)` answers one request and returns whether
    the connection stays open for the next."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.closed = asyncio.Event()  # a connection was closed by the client
        self.server: asyncio.Server | None = None

    async def start(self, tls: ssl.SSLContext | None = None) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=tls)
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.closed.set()
                    return
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                if not await self.script(reader, writer, head, body):
                    writer.close()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed.set()

    async def stop(self) -> None:
        if self.server:
            self.server.close()


def answer(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status.encode(), len(body), extra, body)


def says(raw: bytes, keep: bool = True) -> Script:
    """A script that answers every request with `raw`, then keeps the connection or closes it."""
    async def script(reader, writer, head, body) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep
    return script


async def echo(reader, writer, head, body) -> bool:
    writer.write(answer(b'{"got": %d}' % len(body)))
    await writer.drain()
    return True


