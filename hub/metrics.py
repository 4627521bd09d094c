"""Prometheus metrics (GET /metrics, prometheus_client's text format) and one structured log line per request.

Request metrics are recorded by the gateway as each exchange ends, as plain numbers per (model, endpoint) that become
metric families when Prometheus scrapes (prometheus_client's labelled Counter and Histogram cost the hot path about
9 µs per request: a lock and a label lookup per observation); model metrics (state, requests in flight and
queued, starts) are read from the manager when Prometheus scrapes, so they are never stale and cost nothing between
scrapes. Each hub app has its own registry (tests run several in one process).

    hub_requests_total{model,endpoint,status}          counter
    hub_request_first_byte_seconds{model,endpoint}     histogram: time to the answer's first body byte
    hub_request_seconds{model,endpoint}                histogram: time to the answer's end (streams included)
    hub_tokens_total{model,kind}                       counter: prompt / completion tokens where the engine reports
                                                       usage (plain answers; streams that end with a usage event)
    hub_model_state{model,state}                       1 for the model's current state, 0 for the others
    hub_model_in_flight{model}, hub_model_queued{model}  gauges
    hub_model_starts_total{model}                      counter: engine starts
    hub_model_wakes_total{model}, hub_model_sleeps_total{model}  counters: wakes from sleep, times put to sleep
    hub_model_events_total{model,event}                counter: the moves of each model (ready, woke, evicted,
                                                       stopping, stopped, failed, starting, sleeping)
    hub_model_start_seconds{model}                     histogram: launch to ready
    hub_model_wake_seconds{model}                      histogram: wake asked to ready
    hub_batch_lines_total{model,status}                counter: batch lines recorded (completed, failed, expired,
                                                       cancelled)
"""

from __future__ import annotations

import json
import logging
import re
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from hub.manager.states import State

log = logging.getLogger("hub.requests")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
START_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
# usage fields of OpenAI (prompt/completion) and Anthropic/Responses (input/output) answers
USAGE = re.compile(rb'"(prompt_tokens|completion_tokens|input_tokens|output_tokens)"\s*:\s*(\d+)')
TOKEN_KIND = {b"prompt_tokens": "prompt", b"input_tokens": "prompt", b"completion_tokens": "completion",
              b"output_tokens": "completion"}


@dataclass
class Exchange:
    """One request through the gateway, as it is measured."""

    endpoint: str
    t0: float = field(default_factory=time.perf_counter)
    model: str | None = None
    status: int | None = None
    first_byte: float | None = None
    tail: bytes = b""  # the answer's last bytes, where usage is reported

    def wrap(self, send: Any) -> Any:
        """`send`, noting the status and the first body byte."""
        async def measured(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                self.status = msg["status"]
            elif msg.get("body"):
                if self.first_byte is None:
                    self.first_byte = time.perf_counter()
                self.tail = msg["body"][-4096:]
            await send(msg)
        return measured


class Metrics:
    """The hub's metrics: its own registry, the request metrics, and a collector over the manager."""

    def __init__(self, manager: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = RequestStats()
        self.registry.register(self.requests)
        self.events = Counter("hub_model_events", "Model lifecycle events", ["model", "event"],
                              registry=self.registry)
        self.start_seconds = Histogram("hub_model_start_seconds", "Engine start: launch to ready", ["model"],
                                       buckets=START_BUCKETS, registry=self.registry)
        self.wake_seconds = Histogram("hub_model_wake_seconds", "Engine wake: asked to ready", ["model"],
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_lines_total = Counter("hub_batch_lines", "Batch lines recorded, by model and how they ended "
                                         "(completed, failed, expired, cancelled)", ["model", "status"],
                                         registry=self.registry)
        self.registry.register(ManagerCollector(manager))
        manager.observer = self.on_move  # the models a registry reload adds too
        for s in manager.slots.values():
            s.observer = self.on_move

    def done(self, x: Exchange) -> None:
        """Record a finished exchange and log it as one JSON line."""
        now = time.perf_counter()
        model, status = x.model or "-", x.status or 0
        tokens = {}
        if status == 200 and b'_tokens"' in x.tail:
            for name, value in USAGE.findall(x.tail):
                tokens[TOKEN_KIND[name]] = int(value)  # the last report wins (streams repeat cumulative usage)
        self.requests.record(model, x.endpoint, status, None if x.first_byte is None else x.first_byte - x.t0,
                             now - x.t0, tokens)
        if log.isEnabledFor(logging.INFO):
            log.info(json.dumps({"model": x.model, "endpoint": x.endpoint, "status": status,
                                 "first_byte_ms": round((x.first_byte - x.t0) * 1000, 1) if x.first_byte else None,
                                 "total_ms": round((now - x.t0) * 1000, 1), **tokens}))

    def batch_lines(self, model: str, status: str, n: int = 1) -> None:
        """Count n batch lines of a model that ended with `status` (the batch runner calls this)."""
        self.batch_lines_total.labels(model, status).inc(n)

    def on_move(self, slot: Any, from_: State, to: State, reason: str | None) -> None:
        """A model changed state (hub.manager.states.move calls this as the slot's observer): count the events."""
        if to == State.READY and from_ == State.STARTING:
            waking = slot.waking  # hub.manager.Slot: its start woke it (phase waking)
            if slot.started_at:
                took = max(0.0, time.time() - slot.started_at)
                (self.wake_seconds if waking else self.start_seconds).labels(slot.id).observe(took)
            event = "woke" if waking else "ready"
        elif to == State.STOPPING:
            event = "evicted" if (reason or "").startswith("evicted") else "stopping"
        else:
            event = to.value
        self.events.labels(slot.id, event).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class Latency:
    """A histogram's counts as a list: one per bucket of LATENCY_BUCKETS and one above them, plus their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts, self.sum = [0] * (len(LATENCY_BUCKETS) + 1), 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # a bucket holds the values <= its bound
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by bound, as Prometheus reads them."""
        out, seen = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            seen += n
            out.append((floatToGoString(bound), float(seen)))
        return out


class RequestStats:
    """The request metrics (hub_requests_total, hub_request_first_byte_seconds, hub_request_seconds,
    hub_tokens_total), counted in dicts on the event loop and read when Prometheus scrapes."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.first_byte: dict[tuple[str, str], Latency] = {}
        self.total: dict[tuple[str, str], Latency] = {}
        self.tokens: dict[tuple[str, str], int] = {}

    def record(self, model: str, endpoint: str, status: int, first_byte: float | None, total: float,
               tokens: dict[str, int]) -> None:
        key = (model, endpoint, str(status))
        self.counts[key] = self.counts.get(key, 0) + 1
        pair = (model, endpoint)
        if first_byte is not None:
            if (h := self.first_byte.get(pair)) is None:
                h = self.first_byte[pair] = Latency()
            h.observe(first_byte)
        if (h := self.total.get(pair)) is None:
            h = self.total[pair] = Latency()
        h.observe(total)
        for kind, n in tokens.items():
            self.tokens[(model, kind)] = self.tokens.get((model, kind), 0) + n

    def describe(self) -> list[Metric]:
        return []  # collected fresh on every scrape

    def collect(self) -> Iterator[Metric]:
        # Scrapes run in a worker thread while the loop counts: copy each dict before walking it.
        requests = CounterMetricFamily("hub_requests", "Requests by model, endpoint and status",
                                       labels=["model", "endpoint", "status"])
        for labels, n in list(self.counts.items()):
            requests.add_metric(labels, float(n))
        yield requests
        for name, doc, hists in (
                ("hub_request_first_byte_seconds", "Time to the first byte of the answer", self.first_byte),
                ("hub_request_seconds", "Time to the end of the answer (streams included)", self.total)):
            family = HistogramMetricFamily(name, doc, labels=["model", "endpoint"])
            for labels, h in list(hists.items()):
                family.add_metric(labels, h.buckets(), h.sum)
            yield family
        tokens = CounterMetricFamily("hub_tokens", "Tokens the engines reported in usage", labels=["model", "kind"])
        for labels, n in list(self.tokens.items()):
            tokens.add_metric(labels, float(n))
        yield tokens


class ManagerCollector:
    """Model gauges read from the manager at scrape time."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    def describe(self) -> list[Metric]:
        return []  # collected fresh on every scrape

    def collect(self) -> Iterator[Metric]:
        slots = list(self.manager.slots.values())
        state = GaugeMetricFamily("hub_model_state", "1 for the model's current state", labels=["model", "state"])
        in_flight = GaugeMetricFamily("hub_model_in_flight", "Requests the engine is serving", labels=["model"])
        queued = GaugeMetricFamily("hub_model_queued", "Requests waiting for the model", labels=["model"])
        starts = CounterMetricFamily("hub_model_starts", "Engine starts", labels=["model"])
        wakes = CounterMetricFamily("hub_model_wakes", "Wakes from sleep", labels=["model"])
        sleeps = CounterMetricFamily("hub_model_sleeps", "Times put to sleep", labels=["model"])
        for s in slots:
            for st in State:
                state.add_metric([s.id, st.value], 1.0 if s.state == st else 0.0)
            in_flight.add_metric([s.id], float(s.in_flight))
            queued.add_metric([s.id], float(getattr(s, "queued", 0)))
            starts.add_metric([s.id], float(s.starts))
            wakes.add_metric([s.id], float(getattr(s, "wakes", 0)))
            sleeps.add_metric([s.id], float(getattr(s, "sleeps", 0)))
        yield from (state, in_flight, queued, starts, wakes, sleeps)
