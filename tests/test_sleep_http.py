"""Sleep and wake through a real hub, with the test responder speaking vLLM's sleep endpoints (--sleepable): an
evicted model sleeps with its process kept, its next request wakes it before it is forwarded (the responder refuses
completions while asleep), and `hub down` stops a sleeper."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil

from tests.conftest import responder_command


def registry() -> str:
    sleepy = responder_command("--model", "a", "--sleepable")
    plain = responder_command("--model", "b")
    return f"""
[hub]
memory_budget_gb = 10
sleep_budget_gb = 8

[models.a]
type = "text"
engine = "command"
memory_gb = 6
sleep = true
sleep_memory_gb = 2
[models.a.args]
command = {sleepy}
sleep = "/sleep?level=1"
wake = "/wake_up"

[models.b]
type = "text"
engine = "command"
memory_gb = 6
[models.b.args]
command = {plain}
"""


def chat(url: str, model: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_evicted_sleeper_keeps_its_process_and_wakes_on_request(hub_factory) -> None:
    hub = hub_factory(registry())
    assert chat(hub.url, "a").json()["choices"][0]["message"]["content"] == "echo: hi"
    a = hub.models()["a"]
    pid, engine = a["process"]["pid"], f"http://127.0.0.1:{a['process']['port']}"
    assert chat(hub.url, "b").status_code == 200  # a is evicted: asleep
    models = hub.models()
    assert models["a"]["state"] == "sleeping" and models["b"]["state"] == "ready"
    assert psutil.pid_exists(pid) and httpx.get(engine + "/is_sleeping").json() == {"is_sleeping": True}
    local = next(b for b in httpx.get(hub.url + "/hub/models").json()["budgets"] if b["host"] == "local")
    assert local["used_gb"] == 6 and local["sleep_used_gb"] == 2 and local["sleep_budget_gb"] == 8
    assert "sleeping" in hub.cli("ps").stdout

    with ThreadPoolExecutor(4) as pool:  # four requests for the sleeper: one wake, all answered
        answers = list(pool.map(lambda _: chat(hub.url, "a"), range(4)))
    assert [r.status_code for r in answers] == [200] * 4
    stats = httpx.get(engine + "/test/stats").json()
    assert stats["pid"] == pid and stats["sleeps"] == 1 and stats["wakes"] == 1 and stats["refused_asleep"] == 0
    models = hub.models()
    assert models["a"]["state"] == "ready" and models["a"]["wakes"] == 1 and models["a"]["starts"] == 1
    assert models["b"]["state"] == "stopped"  # b cannot sleep: evicted for a's wake, stopped
    metrics = httpx.get(hub.url + "/metrics").text
    assert 'hub_model_wakes_total{model="a"} 1.0' in metrics
    assert 'hub_model_events_total{event="woke",model="a"} 1.0' in metrics
    assert 'hub_model_events_total{event="sleeping",model="a"} 1.0' in metrics

    assert chat(hub.url, "b").status_code == 200  # a asleep again; `hub down` stops the sleeper's engine
    assert hub.models()["a"]["state"] == "sleeping"
    out = hub.cli("down", "a")
    assert out.returncode == 0, out.stderr
    assert hub.models()["a"]["state"] == "stopped"
    psutil.wait_procs([psutil.Process(pid)], timeout=10) if psutil.pid_exists(pid) else None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
