"""Queues, limits and turns over HTTP: a real `hub serve` with the test responder as `command` engines."""

from __future__ import annotations

import json
import socket
import threading

import httpx

from benchmarks.contention import run_contention
from benchmarks.scenarios import ContentionScenario
from hub.ui.models import COLUMNS, model_rows
from tests.conftest import wait_for
from tests.helpers import text_model


def test_alternating_clients_are_all_served_and_runs_swap_less_than_arrival_order() -> None:
    """4 clients alternate two models that do not fit together (a budget that holds one), each with a start delay:
    no request fails while the other model starts, with the policy on or off, and runs swap less."""
    sc = ContentionScenario(name="t", clients=4, requests=4, start_delay=0.3, delay=0.05)
    on, off = run_contention(sc)
    for row in (on, off):
        assert (row["served"], row["failed"]) == (16, 0), row["first_error"]
    assert on["policy"] == "on" and off["policy"] == "off" and off["max_run_s"] == 0
    # in runs each start serves every client that waits for it: about one start per round of the 4 clients
    assert on["starts"] <= 6 and off["starts"] >= 9 and on["starts"] < off["starts"], (on, off)


def test_max_concurrency_and_max_queue_then_429_and_queue_depth_is_shown(hub_factory, tmp_path) -> None:
    release = tmp_path / "release"  # the engine holds every answer until this file exists
    hub = hub_factory(text_model("slow", "--hold-file", str(release), more="max_concurrency = 1\nmax_queue = 1"))
    assert httpx.post(hub.url + "/hub/models/slow/load", timeout=60).json()["state"] == "ready"
    body = {"model": "slow", "messages": [{"role": "user", "content": "x"}]}
    answers: list[int] = []

    def ask() -> None:
        answers.append(httpx.post(hub.v1 + "/chat/completions", json=body, timeout=60).status_code)

    def counts() -> tuple[int, int]:
        entry = hub.models()["slow"]
        return entry["in_flight"], entry["queued"]

    threads = [threading.Thread(target=ask) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: counts() == (1, 1), "one request in flight and one queued")
        entry = hub.models()["slow"]
        assert (entry["in_flight"], entry["queued"], entry["max_concurrency"], entry["max_queue"]) == (1, 1, 1, 1)
        row = next(line for line in hub.cli("ps").stdout.splitlines() if line.startswith("slow"))
        assert " 1/1 " in row, row
        r = httpx.post(hub.v1 + "/chat/completions", json=body, timeout=30)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        err = r.json()["error"]
        assert err["code"] == "queue_full" and err["type"] == "requests"
        assert "1 request(s) in flight (max_concurrency 1) and 1 waiting (max_queue 1)" in err["message"]
    finally:
        release.touch()
        for t in threads:
            t.join()
    assert answers == [200, 200]
    assert counts() == (0, 0)


def test_models_tab_shows_requests_running_and_waiting() -> None:
    listing = {"time": 100.0, "data": [{"id": "a", "state": "ready", "type": "text", "engine": "vllm",
                                        "runtime": "docker", "budget_gb": 4, "in_flight": 2, "queued": 5,
                                        "last_used": 90.0}]}
    row = model_rows(listing)[0]
    assert row[COLUMNS.index("running / waiting")] == "2 / 5" and row[COLUMNS.index("state")] == "ready"


def test_a_client_that_leaves_while_queued_leaves_the_queue(hub_factory, tmp_path) -> None:
    release = tmp_path / "release"  # the engine holds every answer until this file exists
    hub = hub_factory(text_model("slow", "--hold-file", str(release), more="max_concurrency = 1"))
    assert httpx.post(hub.url + "/hub/models/slow/load", timeout=60).json()["state"] == "ready"
    body = {"model": "slow", "messages": [{"role": "user", "content": "x"}]}
    first = threading.Thread(target=lambda: httpx.post(hub.v1 + "/chat/completions", json=body, timeout=60))
    try:
        first.start()
        wait_for(lambda: hub.models()["slow"]["in_flight"] == 1, "the first request in flight")
        # the second waits behind the first; then its client goes away (closes its connection)
        data = json.dumps(body).encode()
        with socket.create_connection(("127.0.0.1", int(hub.url.rsplit(":", 1)[1])), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: hub\r\ncontent-type: application/json\r\n"
                      b"content-length: %d\r\n\r\n%s" % (len(data), data))
            wait_for(lambda: hub.models()["slow"]["queued"] == 1, "the second request queued")
        wait_for(lambda: hub.models()["slow"]["queued"] == 0, "the departed client's request left the queue")
        assert hub.models()["slow"]["in_flight"] == 1, "the first is still held at the engine"
    finally:
        release.touch()
        first.join()
    stats = httpx.get(f"http://127.0.0.1:{hub.models()['slow']['process']['port']}/test/stats", timeout=5).json()
    assert stats["requests"] == 1, "the departed request must never reach the engine"
