"""The ray runtime without a cluster: its registry keys and checks, what a model asks Ray for and how nodes answer
(hub/runtimes/rayplace.py), the ray planner's decisions (hub/manager/rayplan.py) carried out by a real Manager on a
fake runtime, the actor module's independence from the hub, and a hub that never imports Ray unless asked to."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import subprocess
import sys

import pytest

from hub.config import RAY_HOST
from hub.errors import ConfigError, RuntimeFailure
from hub.manager.planner import AwaitStops, Evict, Fits, Peer, Release
from hub.manager.rayplan import RayWaitForBusy, plan_ray
from hub.manager.states import State
from hub.procs import free_port
from hub.registry import parse_registry
from hub.runtimes import rayplace
from hub.runtimes.base import Handle
from hub.runtimes.rayplace import GB, Node, Request, Room, request_of, room, start_flags, unplaced
from tests.conftest import ROOT, require
from tests.helpers import FakeRuntime, make, states, until, use

CMD = {"command": ["x", "{port}"]}


def registry(models: dict[str, dict], **hub) -> object:
    tables = {m: {"type": "text", "engine": "command", "args": CMD, **t} for m, t in models.items()}
    return parse_registry({"hub": hub, "models": tables})


def problems(models: dict[str, dict], hosts: dict | None = None, **hub) -> list[str]:
    data = {"hub": hub, "hosts": hosts or {},
            "models": {m: {"type": "text", "engine": "command", "args": CMD, **t} for m, t in models.items()}}
    with pytest.raises(ConfigError) as e:
        parse_registry(data)
    return e.value.problems


@pytest.fixture(autouse=True)
def _ray_importable(monkeypatch):
    """The checks are about the registry: Ray itself need not be installed for these tests."""
    monkeypatch.setattr(rayplace, "ray_installed", lambda: True)


# ---- the registry ----

def test_a_ray_model_lives_on_the_cluster_with_no_hub_budget():
    reg = registry({"a": {"runtime": "ray", "memory_gb": 3}, "b": {"memory_gb": 3}}, memory_budget_gb=4)
    assert reg.models["a"].hosts == [RAY_HOST] and reg.models["b"].hosts == ["local"]
    assert reg.budget_of(RAY_HOST) is None and reg.budget_of("local") == 4
    whole = registry({"a": {"memory_gb": 3}}, runtime="ray", ray_address="10.0.0.5:6379")
    assert whole.models["a"].hosts == [RAY_HOST] and whole.hub.ray_address == "10.0.0.5:6379"
    assert whole.hub.ray_namespace == "hub" and whole.hub.ray_place_timeout == 60


def test_ray_keys_are_checked_with_what_to_do():
    out = problems({"a": {"runtime": "ray", "host": "local"},
                    "b": {"runtime": "ray", "gpus": "all", "resources": {"GPU": 1, "memory": 2, "box-a": 1}},
                    "c": {"resources": {"box-a": 1}},
                    "d": {"host": "ray"}}, hosts={"ray": {"docker": "tcp://x:2375"}})
    text = "\n".join(out)
    assert "models.a.host: a ray model is placed by the Ray cluster: leave host out" in text
    assert "models.b.gpus: the ray runtime asks Ray for a number of GPUs" in text
    assert "models.b.resources.GPU: set the model's gpus instead" in text
    assert "models.b.resources.memory: set the model's memory_gb instead" in text
    assert "models.c.resources: only the ray runtime reads resources" in text
    assert "models.d.host: host 'ray' is the Ray cluster: set runtime = \"ray\"" in text
    assert "hosts.ray: 'ray' is the name of the Ray cluster" in text
    assert not any("box-a" in p for p in out), "custom resources are the user's labels"
    assert "resources.box-a: Input should be greater than 0" in "\n".join(problems({"e": {"runtime": "ray",
                                                                                           "resources": {"box-a": 0}}}))


def test_a_ray_registry_without_ray_installed_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(rayplace, "ray_installed", lambda: False)
    assert problems({"a": {"runtime": "ray"}}) == [
        "models.a.runtime: the ray runtime needs Ray in the hub's environment: pip install 'hub[ray]' (in a "
        "checkout: make ray)"]
    registry({"a": {}})  # no ray model: Ray is not needed


# ---- what a model asks for, and where it fits ----

def test_the_request_of_a_model():
    reg = registry({"a": {"runtime": "ray", "gpus": [0, 1], "memory_gb": 3.5, "resources": {"box-a": 1, "CPU": 2}},
                    "b": {"runtime": "ray"}})
    req = request_of(reg, "a")
    assert req == Request(num_cpus=2, num_gpus=2, memory=int(3.5 * GB), custom={"box-a": 1})
    assert req.options() == {"num_cpus": 2, "num_gpus": 2, "resources": {"box-a": 1}, "memory": int(3.5 * GB)}
    assert req.describe() == "CPU 2, GPU 2, memory 3.5 GB, box-a 1"
    assert request_of(reg, "b").options() == {"num_cpus": 0, "num_gpus": 0, "resources": {}}
    assert request_of(reg, "b").describe() == "nothing"
    assert start_flags(req) == "--num-gpus=2 --num-cpus=2 --memory=3758096384 --resources='{\"box-a\": 1}'"


def node(nid: str, total: dict, available: dict | None = None, alive: bool = True) -> Node:
    base = {"CPU": 1.0, "memory": 6.0 * GB, "object_store_memory": 1e8, "node:10.0.0.5": 1.0}
    return Node(nid, "10.0.0.5", alive, {**base, **total}, {**base, **(total if available is None else available)})


def test_room_now_later_or_never():
    req = Request(num_gpus=2, custom={"box": 1})
    a = node("a" * 40, {"GPU": 2, "box": 1}, {"GPU": 1, "box": 1})  # has it all, one GPU in use
    b = node("b" * 40, {"GPU": 4, "box": 1})  # has it all, free
    c = node("c" * 40, {"GPU": 1})  # never
    assert room(req, [a, b, c]) == Room(True, frozenset({a.id, b.id}))
    assert room(req, [a, c]) == Room(False, frozenset({a.id}))
    assert not room(req, [c, node("d" * 40, {"GPU": 8, "box": 1}, alive=False)]).ever, "dead nodes do not count"
    assert a.name() == "node aaaaaaaa (10.0.0.5, box)" and a.labels == ["box"]


def test_unplaced_names_what_each_node_lacks_and_how_to_add_one():
    req = Request(num_gpus=3, custom={"box-a": 1})
    a = node("a" * 40, {"GPU": 2, "box-a": 1})
    b = node("b" * 40, {"GPU": 2, "box-b": 1})
    msg = unplaced("big", req, [a, b], 2)
    assert msg.startswith("model 'big' cannot be placed: no node of the Ray cluster has GPU 3, box-a 1 (waited 2s; "
                          "node aaaaaaaa (10.0.0.5, box-a) has GPU 2; node bbbbbbbb (10.0.0.5, box-b) has GPU 2, "
                          "box-a 0)"), msg
    assert "`ray start --address=HEAD --num-gpus=3 --resources='{\"box-a\": 1}'`" in msg
    busy = unplaced("m", Request(num_gpus=2), [node("a" * 40, {"GPU": 2}, {"GPU": 0})], 60)
    assert "the Ray nodes that have GPU 2 are using it (waited 60s for them; node aaaaaaaa (10.0.0.5) has GPU 0 " \
           "free)" in busy
    assert "has no alive node" in unplaced("m", req, [node("a" * 40, {}, alive=False)], 1)


# ---- the ray planner ----

def peer(pid: str, state: State = State.READY, **kw) -> Peer:
    return Peer(pid, state, 0.0, **kw)


def test_plan_ray_decisions():
    later = Room(False, frozenset({"n"}))
    assert plan_ray("m", Room(True, frozenset({"n"})), [peer("a")]) == Fits()
    assert plan_ray("m", Room(False, frozenset()), [peer("a")]) == Fits(), "evicting cannot help: Ray queues it"
    assert plan_ray("m", later, [peer("a"), peer("b", stopping=True)]) == AwaitStops(("b",))
    lru = [peer("new", last_used=20), peer("old", last_used=10), peer("busy", last_used=1, in_flight=1),
           peer("pin", last_used=0, pinned=True)]
    assert plan_ray("m", later, lru) == Evict(("old",)), "one at a time, least recently used first"
    assert plan_ray("m", later, [*lru, peer("zzz", State.SLEEPING, last_used=5)]) == Evict(("zzz",)), \
        "a sleeper's actor holds its resources: it goes first when it was used least recently"
    assert plan_ray("m", later, [peer("f", State.FAILED, failed_with_handle=True)]) == Release("f")
    wait = plan_ray("m", later, [peer("busy", in_flight=2), peer("s", State.STARTING)])
    assert isinstance(wait, RayWaitForBusy) and [p.id for p in wait.busy] == ["busy"]
    assert [p.id for p in wait.starting] == ["s"]
    assert "model 'm' needs a Ray node that model 'busy' holds, and 'busy' is busy (2 request(s) in flight)" in \
        wait.timeout_error().message
    assert plan_ray("m", later, [peer("pin", pinned=True)]) == Fits(), "pins and foreign work: Ray queues it"


class FakeRay(FakeRuntime):
    """One node that holds `slots` of the engines `ray` at once (the others run elsewhere)."""

    def __init__(self, slots: int, ray: set[str]) -> None:
        super().__init__()
        self.slots = slots
        self.ray = ray
        self.running: set[str] = set()

    async def start(self, model_id, spec, port) -> Handle:
        h = await super().start(model_id, spec, port)
        if model_id in self.ray:
            self.running.add(model_id)
        h.info["node_id"] = "n1"
        return h

    async def stop(self, handle, timeout) -> None:
        await super().stop(handle, timeout)
        self.running.discard(handle.model_id)

    async def room(self, model_id: str) -> Room:
        return Room(len(self.running) < self.slots, frozenset({"n1"}))


async def test_the_manager_evicts_the_least_recently_used_idle_ray_model_when_ray_has_no_room():
    rt = FakeRay(slots=2, ray={"a", "b", "c"})
    mgr, _ = make({"a": 4, "b": 4, "c": 4, "local": 1}, budget=2, rt=rt,
                  extra={m: {"runtime": "ray"} for m in ("a", "b", "c")})
    await use(mgr, "a")
    await use(mgr, "b")
    await use(mgr, "local")  # a process model under its own budget: Ray's models do not count there
    assert states(mgr) == {"a": "ready", "b": "ready", "c": "stopped", "local": "ready"}
    await use(mgr, "c")
    assert rt.stopped == ["a"] and states(mgr)["c"] == "ready" and states(mgr)["b"] == "ready"
    assert mgr.used_gb("local") == 1 and mgr.used_gb(RAY_HOST) == 8
    held = asyncio.create_task(use(mgr, "b", hold=0.3))  # busy: waited for, never evicted
    await until(lambda: mgr.slots["b"].in_flight == 1)
    await use(mgr, "a")
    assert rt.stopped == ["a", "c"] and states(mgr)["b"] == "ready"
    await held
    await mgr.shutdown()


async def test_an_unreachable_cluster_fails_at_once_saying_what_to_do():
    require(importlib.util.find_spec("ray") is not None, "Ray is not installed in the hub's environment: make ray")
    from hub.runtimes.ray import RayRuntime

    rt = RayRuntime(registry({"a": {"runtime": "ray"}}, ray_address=f"127.0.0.1:{free_port()}"))
    with pytest.raises(RuntimeFailure, match=r"cannot reach the Ray cluster at '127.0.0.1:\d+' \(.*\): start it "
                                             r"\(`ray start --head` on one box\) or fix \[hub\] ray_address"):
        await rt.connect()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


# ---- the layers ----

def test_the_actor_module_needs_nothing_but_the_standard_library_and_ray():
    """It travels to the nodes by value: a node has Ray and the engine, not the hub."""
    path = ROOT / "hub" / "runtimes" / "rayactor.py"
    names = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            names |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            names.add((n.module or "").split(".")[0])
    assert names - {"ray", "__future__"} <= set(sys.stdlib_module_names), names


def test_the_hub_imports_ray_only_for_ray_models():
    code = (
        "import sys\n"
        "from hub.registry import load_registry\n"
        "from hub.manager import Manager\n"
        "from hub.runtimes import make_runtime\n"
        "import hub.router, hub.cli, hub.ui\n"
        "reg = load_registry('models.demo.toml')\n"
        "Manager(reg)\n"
        "make_runtime('process', reg)\n"
        "assert 'ray' not in sys.modules, 'the light environment imported ray'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# ---- the runtime's failure paths, on a fake actor (no cluster) ----

class FakeActor:
    """An actor handle whose calls answer from `answers` (a value, or an exception to raise); a call without an
    answer never returns. `calls` lists the method names called."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        import concurrent.futures
        from types import SimpleNamespace

        def remote(*args):
            self.calls.append(name)
            fut: concurrent.futures.Future = concurrent.futures.Future()
            if name in self.answers:
                answer = self.answers[name]
                fut.set_exception(answer) if isinstance(answer, BaseException) else fut.set_result(answer)
            return SimpleNamespace(future=lambda: fut)

        return SimpleNamespace(remote=remote)


def fake_ray_runtime(monkeypatch, tmp_path, actor: FakeActor, placed: bool = True, **hub):
    """A RayRuntime that is 'connected' and creates `actor`; `killed` lists the actors it killed."""
    require(importlib.util.find_spec("ray") is not None, "Ray is not installed in the hub's environment: make ray")
    from types import SimpleNamespace

    from hub.runtimes.ray import RayRuntime

    rt = RayRuntime(registry({"a": {"runtime": "ray"}}, state_dir=str(tmp_path), **hub))
    rt._hub_address = "10.0.0.5"
    rt._actor_class = SimpleNamespace(options=lambda **kw: SimpleNamespace(remote=lambda *a: actor))
    killed: list = []

    async def kill(a):
        killed.append(a)

    async def nothing(model_id):
        return None

    monkeypatch.setattr(rt, "_kill", kill)
    monkeypatch.setattr(rt, "_remove_leftover", nothing)
    monkeypatch.setattr(rt, "_placed", lambda a: placed)
    return rt, killed


async def test_a_placed_actor_that_never_answers_fails_the_start_with_a_runtime_failure(monkeypatch, tmp_path):
    from hub.engines.base import LaunchSpec

    actor = FakeActor({"stop": None})
    rt, killed = fake_ray_runtime(monkeypatch, tmp_path, actor, ray_place_timeout=0.05, start_timeout=0.05)
    with pytest.raises(RuntimeFailure, match=r"the Ray actor of model 'a' was placed on a node but did not answer "
                                             r"within start_timeout \(0.05s\)"):
        await rt.start("a", LaunchSpec(command=["x"]), free_port())
    assert killed == [actor] and actor.calls[-1] == "stop", "its engine's process group is stopped, then the actor"


async def test_a_cancelled_start_stops_the_engine_group_before_it_kills_the_actor(monkeypatch, tmp_path):
    from hub.engines.base import LaunchSpec

    actor = FakeActor({"stop": None})
    rt, killed = fake_ray_runtime(monkeypatch, tmp_path, actor)
    task = asyncio.create_task(rt.start("a", LaunchSpec(command=["x"]), free_port()))
    await until(lambda: "info" in actor.calls)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert actor.calls == ["info", "stop"] and killed == [actor], \
        "a killed actor takes only the engine's leader along (PR_SET_PDEATHSIG): its children need the group kill"


async def test_an_unplaced_actor_is_killed_without_waiting_on_it(monkeypatch, tmp_path):
    from hub.engines.base import LaunchSpec

    actor = FakeActor({})
    rt, killed = fake_ray_runtime(monkeypatch, tmp_path, actor, placed=False, ray_place_timeout=0.05)

    async def no_nodes():
        return []

    monkeypatch.setattr(rt, "nodes", no_nodes)
    with pytest.raises(RuntimeFailure, match="the cluster has no alive node"):
        await rt.start("a", LaunchSpec(command=["x"]), free_port())
    assert actor.calls == ["info"] and killed == [actor]


def test_the_probe_checks_ray_address_from_the_environment_too(monkeypatch):
    """Unset [hub] ray_address reads $RAY_ADDRESS: a dead one fails at once, as a dead ray_address does (Ray's own
    connect retries for minutes)."""
    require(importlib.util.find_spec("ray") is not None, "Ray is not installed in the hub's environment: make ray")
    import ray

    from hub.runtimes.ray import RayRuntime

    port = free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")

    def no_init(**kw):
        raise AssertionError("ray.init was called on an address that does not answer")

    monkeypatch.setattr(ray, "init", no_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    rt = RayRuntime(registry({"a": {"runtime": "ray"}}))
    with pytest.raises(RuntimeFailure, match=rf"cannot reach the Ray cluster at '127.0.0.1:{port}' \(from "
                                             r"\$RAY_ADDRESS\)"):
        rt._probe()
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    rt._probe()  # nothing to probe: Ray looks for the cluster of this machine


async def test_an_actor_ray_refuses_to_create_fails_the_start_with_ray_s_reason(monkeypatch, tmp_path):
    """Ray raises ValueError, not a RayError, for options it refuses and for a name still taken."""
    from types import SimpleNamespace

    from hub.engines.base import LaunchSpec

    rt, killed = fake_ray_runtime(monkeypatch, tmp_path, FakeActor({}))

    def taken(*a):
        raise ValueError("The name hub-a (namespace=hub) is already taken.")

    rt._actor_class = SimpleNamespace(options=lambda **kw: SimpleNamespace(remote=taken))
    with pytest.raises(RuntimeFailure, match=r"Ray refused the actor of model 'a': The name hub-a \(namespace=hub\) "
                                             "is already taken"):
        await rt.start("a", LaunchSpec(command=["x"]), free_port())
    assert killed == []
