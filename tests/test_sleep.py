"""Sleep tiers (hub/manager/sleep.py) with the in-memory runtime of test_manager: sleep on eviction and ttl, wake on
request, the sleep budget, unload and crashes of sleepers; the engines' sleep surface and the registry checks."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from hub.engines import get_engine
from hub.errors import ConfigError, StartFailed
from hub.registry import parse_registry
from tests.helpers import FakeEngine, FakeRuntime, make, states, until, use

SLEEPY = {"sleep": True, "args": {"sleep": "/sleep", "wake": "/wake"}}


class SleepyEngine(FakeEngine):
    """A fake engine that can sleep: it records the calls, and answers `ready` only when awake."""

    def __init__(self, rt: FakeRuntime, fail_sleep: bool = False) -> None:
        super().__init__(rt)
        self.calls: list[tuple[str, str]] = []
        self.asleep: set[str] = set()
        self.fail_sleep = fail_sleep

    def sleep_refusal(self, model) -> str | None:
        return None

    async def sleep(self, client, base_url, model, timeout) -> None:
        mid = base_url.removeprefix("fake://")
        await asyncio.sleep(0.02)
        if self.fail_sleep:
            raise httpx.HTTPStatusError("500", request=httpx.Request("POST", base_url),
                                        response=httpx.Response(500))
        self.calls.append(("sleep", mid))
        self.asleep.add(mid)

    async def wake(self, client, base_url, model, timeout) -> None:
        mid = base_url.removeprefix("fake://")
        await asyncio.sleep(0.02)
        self.calls.append(("wake", mid))
        self.asleep.discard(mid)

    async def ready(self, client, base_url, spec) -> bool:
        return base_url.removeprefix("fake://") not in self.asleep and await super().ready(client, base_url, spec)


def sleepy(models: dict[str, float], sleepers: dict[str, float | None], fail_sleep: bool = False, **kw):
    """make() whose models in `sleepers` have sleep = true and hold {id: GB (None: the engine's)} asleep."""
    extra = {m: {**SLEEPY, **({"sleep_memory_gb": gb} if gb is not None else {})} for m, gb in sleepers.items()}
    mgr, rt = make(models, extra=extra, **kw)
    engine = SleepyEngine(rt, fail_sleep)
    for s in mgr.slots.values():
        s.engine = engine
    return mgr, rt, engine


async def test_eviction_puts_a_sleeper_to_sleep_and_its_next_request_wakes_it() -> None:
    mgr, rt, eng = sleepy({"a": 6, "b": 6}, {"a": 1}, budget=10)
    await use(mgr, "a")
    await use(mgr, "b")  # a is evicted: asleep, its process kept
    assert states(mgr) == {"a": "sleeping", "b": "ready"}
    assert rt.stopped == [] and eng.calls == [("sleep", "a")] and mgr.used_gb("local") == 6
    assert mgr.slots["a"].reason == "evicted to make room for 'b'" and mgr.sleep_used_gb("local") == 1
    # four requests for the sleeper: one wake (b, not a sleeper, is stopped for the room), all served
    await asyncio.gather(*(use(mgr, "a") for _ in range(4)))
    assert states(mgr) == {"a": "ready", "b": "stopped"}
    assert eng.calls == [("sleep", "a"), ("wake", "a")] and rt.started == ["a", "b"] and rt.stopped == ["b"]
    assert mgr.slots["a"].wakes == 1 and mgr.slots["a"].starts == 1 and mgr.slots["a"].sleeps == 1
    await mgr.shutdown()
    assert sorted(rt.stopped) == ["a", "b"]


async def test_moves_reach_the_observer_with_woke_distinct_from_a_start() -> None:
    mgr, _, _ = sleepy({"a": 6, "b": 6}, {"a": 1}, budget=10)
    moves: list[tuple[str, str, str, bool]] = []
    for s in mgr.slots.values():
        s.observer = lambda slot, f, t, r: moves.append((slot.id, f.value, t.value, slot.waking))
    await use(mgr, "a")
    await use(mgr, "b")
    await use(mgr, "a")
    a_moves = [m[1:] for m in moves if m[0] == "a"]
    assert a_moves == [("stopped", "starting", False), ("starting", "ready", False), ("ready", "sleeping", False),
                       ("sleeping", "starting", True), ("starting", "ready", True)]
    await mgr.shutdown()


async def test_sleep_budget_stops_the_least_recently_used_sleeper() -> None:
    mgr, rt, _ = sleepy({"a": 5, "b": 5, "c": 5}, {"a": 2, "b": 2, "c": 2}, budget=5, sleep_budget_gb=3)
    await use(mgr, "a")
    await use(mgr, "b")  # a asleep (2 of 3 GB)
    await use(mgr, "c")  # b asleep: a, the least recently used sleeper, is stopped for its RAM
    assert states(mgr) == {"a": "stopped", "b": "sleeping", "c": "ready"}
    assert rt.stopped == ["a"] and "sleep budget" in mgr.slots["a"].reason
    assert mgr.sleep_used_gb("local") == 2
    await mgr.shutdown()


async def test_a_sleeper_larger_than_the_sleep_budget_is_stopped_instead() -> None:
    mgr, rt, eng = sleepy({"a": 5, "b": 5}, {"a": 4}, budget=5, sleep_budget_gb=3)
    await use(mgr, "a")
    await use(mgr, "b")
    assert states(mgr) == {"a": "stopped", "b": "ready"} and eng.calls == [] and rt.stopped == ["a"]
    await mgr.shutdown()


async def test_ttl_puts_a_sleeper_to_sleep_and_stops_the_others() -> None:
    mgr, rt, eng = sleepy({"a": 1, "b": 1}, {"a": None}, idle_ttl=0.5)
    await mgr.startup()
    await asyncio.gather(use(mgr, "a"), use(mgr, "b"))
    # the ttl pass runs every second: wait until both have left ready and the transitions have ended
    await until(lambda: not set(states(mgr).values()) & {"ready", "starting", "stopping"})
    assert states(mgr) == {"a": "sleeping", "b": "stopped"} and rt.stopped == ["b"]
    assert mgr.slots["a"].reason == "idle for 0.5s (ttl)"
    assert mgr.sleep_used_gb("local") == 1.0  # the command engine's estimate: the process
    await use(mgr, "a")
    assert states(mgr)["a"] == "ready" and eng.calls == [("sleep", "a"), ("wake", "a")]
    await mgr.shutdown()


async def test_unload_and_load_of_a_sleeper() -> None:
    mgr, rt, _ = sleepy({"a": 6, "b": 6}, {"a": 1}, budget=10)
    await use(mgr, "a")
    await use(mgr, "b")
    await mgr.load("a")  # a load wakes it too
    assert states(mgr) == {"a": "ready", "b": "sleeping"} or states(mgr) == {"a": "ready", "b": "stopped"}
    await use(mgr, "b")
    assert states(mgr)["a"] == "sleeping"
    await mgr.unload("a")  # unloading a sleeper stops its engine
    assert states(mgr)["a"] == "stopped" and "a" in rt.stopped and mgr.sleep_used_gb("local") == 0
    await mgr.shutdown()


async def test_a_sleeper_whose_engine_dies_is_failed_and_restarted_cold() -> None:
    mgr, rt, eng = sleepy({"a": 6, "b": 6}, {"a": 1}, budget=10)
    await use(mgr, "a")
    await use(mgr, "b")
    rt.exits["a"].set_result("exited with code 137")
    await asyncio.sleep(0.05)
    assert states(mgr)["a"] == "failed" and "137" in mgr.slots["a"].reason
    eng.asleep.clear()
    await use(mgr, "a")  # a cold start, not a wake
    assert states(mgr)["a"] == "ready" and rt.started == ["a", "b", "a"] and mgr.slots["a"].wakes == 0
    await mgr.shutdown()


async def test_an_engine_that_cannot_sleep_is_stopped_and_a_failed_wake_fails_the_start() -> None:
    mgr, rt, eng = sleepy({"a": 6, "b": 6}, {"a": 1}, fail_sleep=True, budget=10)
    await use(mgr, "a")
    await use(mgr, "b")
    assert states(mgr) == {"a": "stopped", "b": "ready"} and "could not sleep" in mgr.slots["a"].reason
    await mgr.shutdown()

    mgr, rt, eng = sleepy({"a": 6, "b": 6}, {"a": 1}, budget=10)
    await use(mgr, "a")
    await use(mgr, "b")

    async def broken(client, base_url, model, timeout) -> None:
        raise httpx.ConnectError("refused")

    eng.wake = broken
    with pytest.raises(StartFailed, match="could not wake from sleep"):
        await use(mgr, "a")
    assert states(mgr)["a"] == "failed" and "a" in rt.stopped  # its engine released
    await mgr.shutdown()


# ---- the engines' sleep surface and the registry ----

def registry(model: dict) -> dict:
    return {"models": {"m": {"type": "text", "memory_gb": 8, **model}}}


def test_hub_check_refuses_sleep_where_the_engine_cannot_and_names_the_key() -> None:
    vllm = {"engine": "vllm", "source": "/m", "sleep": True}
    with pytest.raises(ConfigError, match=r"models\.m\.sleep: .*args\.enable_sleep_mode = true"):
        parse_registry(registry(vllm))
    reg = parse_registry(registry({**vllm, "args": {"enable_sleep_mode": True}}))
    assert get_engine("vllm").can_sleep(reg.models["m"])
    with pytest.raises(ConfigError, match=r"models\.m\.sleep: .*args\.sleep and args\.wake"):
        parse_registry(registry({"engine": "command", "args": {"command": ["x", "{port}"]}, "sleep": True}))
    with pytest.raises(ConfigError, match=r"hosts\.local\.sleep_budget_gb: .*\[hub\] sleep_budget_gb"):
        parse_registry({"hosts": {"local": {"sleep_budget_gb": 4}}})
    reg = parse_registry({"hub": {"sleep_budget_gb": 16}, "hosts": {"pc": {"docker": "tcp://pc:2375",
                                                                             "sleep_budget_gb": 32}}})
    assert reg.sleep_budget_of("local") == 16 and reg.sleep_budget_of("pc") == 32


def test_sleep_memory_defaults_per_engine() -> None:
    on = {"engine": "vllm", "source": "/m", "sleep": True, "args": {"enable_sleep_mode": True}}
    level1 = parse_registry(registry(on)).models["m"]
    level2 = parse_registry(registry({**on, "args": {"enable_sleep_mode": True, "sleep_level": 2}})).models["m"]
    image = parse_registry({"models": {"m": {"type": "image", "engine": "diffusers", "source": "/m", "sleep": True,
                                             "memory_gb": 8}}}).models["m"]
    vllm, diffusers = get_engine("vllm"), get_engine("diffusers")
    assert vllm.sleep_memory_gb(level1) == 9.0  # the weights in CPU RAM (memory_gb) and the process
    assert vllm.sleep_memory_gb(level2) == 1.0 and diffusers.sleep_memory_gb(image) == 1.0


async def test_vllm_sleep_and_wake_speak_vllms_endpoints() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}?{request.url.query.decode()} {request.content.decode()}")
        return httpx.Response(200, json={})

    on = {"engine": "vllm", "source": "/m", "sleep": True}
    level1 = parse_registry(registry({**on, "args": {"enable_sleep_mode": True}})).models["m"]
    level2 = parse_registry(registry({**on, "args": {"enable_sleep_mode": True, "sleep_level": 2}})).models["m"]
    vllm = get_engine("vllm")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await vllm.sleep(client, "http://e", level1, 5)
        await vllm.wake(client, "http://e", level1, 5)
        await vllm.sleep(client, "http://e", level2, 5)
        await vllm.wake(client, "http://e", level2, 5)
    assert seen == ["POST /sleep?level=1 ", "POST /wake_up? ", "POST /sleep?level=2 ",
                    "POST /wake_up?tags=weights ", "POST /collective_rpc? {\"method\":\"reload_weights\"}",
                    "POST /wake_up? "]
