"""GET /metrics through a real hub with the test responder: Prometheus' text format (parsed by prometheus_client's
own parser), counters that move as requests are made, model states and starts, and the one log line per request."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import client, text_model


def scrape(hub, **kw) -> dict[tuple[str, tuple], float]:
    r = httpx.get(hub.url + "/metrics", timeout=10, **kw)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_tokens_states_and_starts(hub_factory) -> None:
    hub = hub_factory(text_model("echo") + text_model("idle"))
    before = scrape(hub)
    assert value(before, "hub_model_state", model="echo", state="stopped") == 1.0
    assert value(before, "hub_requests_total", model="echo", endpoint="/v1/chat/completions", status="200") == 0
    c = client(hub)
    for _ in range(3):
        c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "one two"}])
    list(c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}], stream=True))
    httpx.post(hub.v1 + "/chat/completions", json={"model": "nope", "messages": []}, timeout=10)
    after = scrape(hub)
    assert value(after, "hub_requests_total", model="echo", endpoint="/v1/chat/completions", status="200") == 4
    # an id no model has is counted under "-": ids a client makes up must not grow the metrics (a series each)
    assert value(after, "hub_requests_total", model="-", endpoint="/v1/chat/completions", status="404") == 1
    assert 'model="nope"' not in httpx.get(hub.url + "/metrics", timeout=10).text
    assert value(after, "hub_request_seconds_count", model="echo", endpoint="/v1/chat/completions") == 4
    assert value(after, "hub_request_first_byte_seconds_count", model="echo", endpoint="/v1/chat/completions") == 4
    # the responder reports usage: 1 prompt token and 3 completion tokens ("echo: one two") per plain answer
    assert value(after, "hub_tokens_total", model="echo", kind="completion") == 9
    assert value(after, "hub_tokens_total", model="echo", kind="prompt") == 3
    assert value(after, "hub_model_state", model="echo", state="ready") == 1.0
    assert value(after, "hub_model_state", model="idle", state="stopped") == 1.0
    assert value(after, "hub_model_starts_total", model="echo") == 1
    assert value(after, "hub_model_events_total", model="echo", event="ready") == 1
    assert value(after, "hub_model_start_seconds_count", model="echo") == 1
    assert value(after, "hub_model_in_flight", model="echo") == 0
    hub.cli("down", "echo")
    assert value(scrape(hub), "hub_model_events_total", model="echo", event="stopped") == 1
    lines = [json.loads(ln[ln.index("{"):]) for ln in hub.log.read_text().splitlines()
             if '"endpoint": "/v1/chat/completions"' in ln]
    assert len(lines) == 5 and {ln["status"] for ln in lines} == {200, 404} and lines[0]["total_ms"] > 0


def test_metrics_need_the_key_when_the_hub_has_one(hub_factory) -> None:
    hub = hub_factory('[hub]\napi_key_env = "M_KEY"\n' + text_model("echo"), env={"M_KEY": "k"})
    assert httpx.get(hub.url + "/metrics", timeout=10).status_code == 401
    assert scrape(hub, headers={"authorization": "Bearer k"})
