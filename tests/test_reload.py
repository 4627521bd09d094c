"""Registry reload on the Manager (hub/manager/reload.py) with the in-memory runtime and engine: each kind of change,
a restart when idle against restart=True, removal with its drain, and a reload while a start is under way."""

from __future__ import annotations

import asyncio

import pytest

from hub.errors import ModelNotFound
from hub.manager import Phase, State
from tests.helpers import FakeEngine, FakeRuntime, fake_registry, make, until, use

NEW_ARGS = {"args": {"command": ["y", "{port}"]}}


def kinds(report) -> dict[str, str]:
    return {c.model: c.change for c in report.changes}


async def test_added_model_is_available_at_once() -> None:
    mgr, rt = make({"a": 1})
    report = await mgr.reload(fake_registry({"a": 1, "b": 2}))
    assert kinds(report) == {"b": "added"}
    s = mgr.slot("b")
    s.engine = FakeEngine(rt)
    await use(mgr, "b")
    assert s.state == State.READY and rt.started == ["b"] and s.limits.max_queue == mgr.registry.hub.max_queue
    await mgr.shutdown()


async def test_live_change_applies_without_a_restart() -> None:
    mgr, rt = make({"a": 1}, extra={"a": {"max_concurrency": 1}})
    await use(mgr, "a")
    s = mgr.slots["a"]
    report = await mgr.reload(fake_registry({"a": 1}, extra={"a": {"max_concurrency": 3, "ttl": "5m",
                                                                    "description": "new"}}, max_wait=12))
    assert kinds(report) == {"a": "updated"}
    assert set(report.changes[0].fields) == {"max_concurrency", "ttl", "description"} and report.hub == ["max_wait"]
    assert s.limits.max_concurrency == 3 and s.limits.max_wait == 12 and mgr.ttl_of(s) == 300
    assert s.cfg.description == "new" and mgr.reloads.pending(s) is None
    leases = [await mgr.acquire("a") for _ in range(3)]  # three at once now, on the same engine
    assert s.in_flight == 3 and rt.started == ["a"] and s.starts == 1 and rt.stopped == []
    for lease in leases:
        lease.release()
    await mgr.shutdown()


async def test_engine_change_restarts_once_idle() -> None:
    mgr, rt = make({"a": 1})
    lease = await mgr.acquire("a")
    s = mgr.slots["a"]
    report = await mgr.reload(fake_registry({"a": 1}, extra={"a": NEW_ARGS}))
    assert kinds(report) == {"a": "stale"} and report.changes[0].fields == ["args"]
    assert mgr.reloads.pending(s) == "restarts when idle (changed: args)"
    await asyncio.sleep(0.3)  # busy: it keeps its engine and its old config meanwhile
    assert s.state == State.READY and s.starts == 1 and s.cfg.args["command"][0] == "x"
    more = await mgr.acquire("a")  # and it still takes new requests
    more.release()
    lease.release()
    await until(lambda: s.starts == 2 and s.state == State.READY)
    assert rt.stopped == ["a"] and rt.started == ["a", "a"] and s.cfg.args["command"][0] == "y"
    assert mgr.reloads.pending(s) is None and s.phase is Phase.NONE
    await mgr.shutdown()


async def test_restart_now_drains_and_the_queue_waits_for_the_new_engine() -> None:
    mgr, rt = make({"a": 1}, extra={"a": {"max_concurrency": 1}})
    first = await mgr.acquire("a")
    s = mgr.slots["a"]
    queued = asyncio.create_task(mgr.acquire("a"))
    await until(lambda: s.queued == 1)
    report = await mgr.reload(fake_registry({"a": 1}, extra={"a": {"max_concurrency": 1, **NEW_ARGS}}), restart=True)
    assert kinds(report) == {"a": "restarting"} and mgr.reloads.pending(s) == "restarting after reload"
    first.release()  # the place frees up, but the queued request waits for the new engine
    lease = await asyncio.wait_for(queued, 5)
    assert s.starts == 2 and rt.started == ["a", "a"] and rt.stopped == ["a"] and s.cfg.args["command"][0] == "y"
    lease.release()
    assert mgr.reloads.pending(s) is None
    await mgr.shutdown()


async def test_idle_engine_restarts_at_once_and_stopped_one_takes_the_config() -> None:
    mgr, rt = make({"a": 1, "b": 1})
    await use(mgr, "a")
    report = await mgr.reload(fake_registry({"a": 1, "b": 1}, extra={"a": NEW_ARGS, "b": NEW_ARGS}))
    assert kinds(report) == {"a": "restarting", "b": "updated"}
    assert "next start" in report.changes[1].detail and mgr.slots["b"].cfg.args["command"][0] == "y"
    await until(lambda: mgr.slots["a"].starts == 2 and mgr.slots["a"].state == State.READY)
    assert rt.started == ["a", "a"] and mgr.slots["b"].state == State.STOPPED  # b is not started by the reload
    await mgr.shutdown()


async def test_reverting_calls_the_pending_restart_off() -> None:
    mgr, rt = make({"a": 1})
    lease = await mgr.acquire("a")
    await mgr.reload(fake_registry({"a": 1}, extra={"a": NEW_ARGS}))
    report = await mgr.reload(fake_registry({"a": 1}))
    assert kinds(report) == {"a": "updated"} and "called off" in report.changes[0].detail
    lease.release()
    await asyncio.sleep(0.5)
    assert mgr.slots["a"].starts == 1 and rt.stopped == [] and mgr.reloads.pending(mgr.slots["a"]) is None
    await mgr.shutdown()


async def test_removed_model_drains_then_stops() -> None:
    mgr, rt = make({"a": 1, "b": 1})
    lease = await mgr.acquire("a")
    s = mgr.slots["a"]
    report = await mgr.reload(fake_registry({"b": 1}, drain_timeout=30))
    assert kinds(report) == {"a": "removing"}
    with pytest.raises(ModelNotFound, match="removed from the registry"):
        await mgr.acquire("a")
    assert mgr.reloads.pending(s) == "removing: draining 1 request(s)" and s.state == State.READY
    await asyncio.sleep(0.3)
    assert rt.stopped == []  # its request in flight keeps it
    lease.release()
    await until(lambda: "a" not in mgr.slots)
    assert rt.stopped == ["a"] and s.state == State.STOPPED
    await mgr.shutdown()


async def test_removed_model_is_stopped_after_drain_timeout_and_a_stopped_one_goes_at_once() -> None:
    mgr, rt = make({"a": 1, "b": 1})
    lease = await mgr.acquire("a")
    report = await mgr.reload(fake_registry({}, drain_timeout=0.3))
    assert kinds(report) == {"a": "removing", "b": "removed"} and "b" not in mgr.slots
    await until(lambda: "a" not in mgr.slots)
    assert rt.stopped == ["a"]
    lease.release()  # late: harmless
    await mgr.shutdown()


async def test_model_added_back_while_draining_stays() -> None:
    mgr, rt = make({"a": 1})
    lease = await mgr.acquire("a")
    await mgr.reload(fake_registry({}, drain_timeout=30))
    report = await mgr.reload(fake_registry({"a": 1}))
    assert kinds(report) == {} and mgr.slot("a").state == State.READY
    lease.release()
    await asyncio.sleep(0.5)
    assert "a" in mgr.slots and rt.stopped == []
    await use(mgr, "a")
    await mgr.shutdown()


@pytest.mark.parametrize("restart", [False, True])
async def test_reload_while_a_start_is_under_way(restart: bool) -> None:
    mgr, rt = make({"a": 1}, rt=FakeRuntime(ready_after=0.3))
    s = mgr.slots["a"]
    waiting = asyncio.create_task(mgr.acquire("a"))
    await until(lambda: s.state == State.STARTING)
    report = await mgr.reload(fake_registry({"a": 1}, extra={"a": NEW_ARGS}), restart=restart)
    assert kinds(report) == {"a": "restarting" if restart else "stale"}
    lease = await asyncio.wait_for(waiting, 5)
    # restart=True: the request waits for the new engine; else the start under way serves it, then it restarts
    assert s.starts == (2 if restart else 1)
    lease.release()
    await until(lambda: s.starts == 2 and s.state == State.READY and mgr.reloads.pending(s) is None)
    assert s.cfg.args["command"][0] == "y" and rt.stopped == ["a"]
    await mgr.shutdown()


async def test_hub_keys_that_need_a_restart_are_reported_not_applied() -> None:
    mgr, _ = make({"a": 1}, port=8100)
    report = await mgr.reload(fake_registry({"a": 1}, port=8200, idle_ttl=60, state_dir="elsewhere"))
    assert report.hub == ["idle_ttl"] and report.needs_restart == ["port", "state_dir"] and report.changes == []
    assert mgr.registry.hub.port == 8100 and mgr.registry.hub.state_dir == ".hub" and mgr.registry.hub.idle_ttl == 60
    assert mgr.sleeper.registry is mgr.registry  # type: ignore[attr-defined]
    await mgr.shutdown()


async def test_changed_host_restarts_its_models_and_its_runtime_is_made_again() -> None:
    rt = FakeRuntime()
    made: list[tuple[str, str]] = []

    def factory(name: str, host: str) -> FakeRuntime:
        made.append((name, host))
        return rt

    gpu = {"gpu": {"docker": "tcp://10.0.0.2:2375"}}
    on_gpu = {"a": {"host": "gpu", "runtime": "docker"}}
    mgr, _ = make({"a": 1, "b": 1}, rt=rt, hosts=gpu, extra=on_gpu, factory=factory)
    await use(mgr, "a")
    await use(mgr, "b")
    report = await mgr.reload(fake_registry({"a": 1, "b": 1}, hosts={"gpu": {"docker": "tcp://10.0.0.3:2375"}},
                                            extra=on_gpu))
    assert report.hosts == ["gpu"] and kinds(report) == {"a": "restarting"}
    assert report.changes[0].fields == ["hosts.gpu"]
    await until(lambda: mgr.slots["a"].starts == 2 and mgr.slots["a"].state == State.READY)
    assert made.count(("docker", "gpu")) == 2 and rt.stopped == ["a"]  # the old host's runtime was dropped
    await mgr.shutdown()


async def test_two_reloads_at_once_do_not_mix() -> None:
    mgr, _ = make({"a": 1})
    first, second = await asyncio.gather(mgr.reload(fake_registry({"a": 1, "b": 1})),
                                         mgr.reload(fake_registry({"a": 1, "c": 1})))
    assert kinds(first) == {"b": "added"} and kinds(second) == {"b": "removed", "c": "added"}
    assert list(mgr.slots) == ["a", "c"]
    await mgr.shutdown()
