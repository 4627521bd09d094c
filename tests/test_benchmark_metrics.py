"""Unit tests of the pure parts of benchmarks/ and of the memory ledger: no process is started."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from benchmarks.metrics import RequestRecord, added_latency, percentile, summarize_text
from benchmarks.results import write_csv
from hub.admin import model_entries
from hub.ledger import MEASURED_MARGIN, Ledger, budgeted_gb, ledger_memory_of
from hub.manager import Manager
from hub.registry import parse_registry


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0], [0.1 * i * i for i in range(37)]])
@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        percentile([1.0], 101)


def test_request_metrics_from_timestamps() -> None:
    r = RequestRecord(start=10.0, chunk_times=[10.5, 10.6, 10.8, 11.1], end=11.2)
    assert r.ok
    assert r.ttft == pytest.approx(0.5)
    assert r.itl == pytest.approx([0.1, 0.2, 0.3])
    assert r.e2el == pytest.approx(1.2)
    assert r.output_tokens == 4  # one per chunk without a usage report
    assert r.tpot == pytest.approx((1.2 - 0.5) / 3)
    r.usage_tokens = 8  # the engine's own count wins: chunks may carry several tokens
    assert r.tpot == pytest.approx((1.2 - 0.5) / 7)


def test_tpot_needs_two_tokens_and_success() -> None:
    assert RequestRecord(start=0.0, chunk_times=[0.2], end=0.3).tpot is None
    failed = RequestRecord(start=0.0, chunk_times=[0.2, 0.3], end=None, error="HTTP 500")
    assert not failed.ok and failed.tpot is None


def test_summary_pools_itl_and_counts_throughput_over_the_run() -> None:
    recs = [
        RequestRecord(start=0.0, chunk_times=[0.1, 0.2, 0.3], end=0.3),
        RequestRecord(start=0.0, chunk_times=[0.2, 0.6], end=1.0),
        RequestRecord(start=0.5, error="HTTP 503"),
    ]
    s = summarize_text(recs)
    assert (s["requests"], s["completed"], s["failed"]) == (3, 2, 1)
    assert s["duration_s"] == pytest.approx(1.0)
    assert s["output_tokens"] == 5
    assert s["output_tok_s"] == pytest.approx(5.0)
    assert s["ttft_ms_p50"] == pytest.approx(150.0)
    # pooled ITLs: 100, 100 (first request) and 400 (second)
    assert s["itl_ms_p50"] == pytest.approx(100.0)
    assert s["itl_ms_mean"] == pytest.approx(200.0)
    assert s["e2el_ms_p99"] == pytest.approx(300 + 0.99 * 700)


def test_added_latency_is_the_difference_of_percentiles() -> None:
    direct = [0.001] * 99 + [0.002]
    through = [0.0015] * 99 + [0.010]
    a = added_latency(direct, through)
    assert a["added_p50_ms"] == pytest.approx(0.5)
    assert a["added_p99_ms"] == pytest.approx(percentile(through, 99) * 1000 - percentile(direct, 99) * 1000)


def test_csv_has_the_union_of_columns(tmp_path) -> None:
    p = write_csv([{"a": 1}, {"a": 2, "b": "x"}], tmp_path / "out" / "r.csv", info=False)
    assert p.read_text().splitlines() == ["a,b", "1,", "2,x"]


# ---- the memory ledger ----

def test_ledger_round_trip_and_keep_max(tmp_path) -> None:
    led = Ledger(tmp_path / "memory.json")
    assert led.get("m") is None
    led.record("m", 2.5, "cuda:0", "nvidia-smi")
    assert Ledger(tmp_path / "memory.json").get("m").peak_gb == 2.5
    led.record("m", 1.0, "cuda:0")  # a lower peak on the same device keeps the higher one
    assert led.get("m").peak_gb == 2.5
    led.record("m", 3.0, "cuda:0")
    assert led.get("m").peak_gb == 3.0
    led.record("m", 0.5, "cpu")  # another device replaces it
    assert (led.get("m").peak_gb, led.get("m").device) == (0.5, "cpu")
    data = json.loads((tmp_path / "memory.json").read_text())
    assert set(data["m"]) >= {"peak_gb", "device", "measured_at"}


def test_ledger_sees_changes_and_ignores_garbage(tmp_path) -> None:
    path = tmp_path / "memory.json"
    led = Ledger(path)
    path.write_text('{"a": {"peak_gb": 1, "device": "cpu", "measured_at": 0}, "b": {"peak_gb": "x"}}')
    assert set(led.entries()) == {"a"}, "a malformed entry is skipped, the others kept"
    path.write_text('{"a": {"peak_gb": 4, "device": "cpu", "measured_at": 0, "source": "rss"}}')
    os.utime(path, ns=(1, 10**18))  # a different mtime, whatever the clock's resolution
    assert led.get("a").peak_gb == 4, "a changed file is read again"
    path.write_text("not json")
    os.utime(path, ns=(1, 2 * 10**18))
    assert led.entries() == {}


def test_budget_declared_else_measured_plus_margin_else_zero(tmp_path) -> None:
    led = Ledger(tmp_path / "memory.json")
    led.record("m", 2.0, "cpu")
    assert budgeted_gb(5.0, led.get("m")) == 5.0
    assert budgeted_gb(None, led.get("m")) == pytest.approx(2.0 * (1 + MEASURED_MARGIN))
    assert budgeted_gb(None, None) == 0.0


def test_manager_budgets_undeclared_models_from_the_ledger(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HUB_STATE_DIR", str(tmp_path))
    reg = parse_registry({
        "hub": {"memory_budget_gb": 10},
        "models": {
            "declared": {"type": "text", "engine": "command", "args": {"command": ["x", "{port}"]}, "memory_gb": 3},
            "measured": {"type": "text", "engine": "command", "args": {"command": ["x", "{port}"]}},
        },
    })
    mgr = Manager(reg)
    assert mgr.memory_of(mgr.slots["measured"]) == 0.0
    Ledger.of(reg).record("measured", 4.0, "cuda:0", "nvidia-smi")
    Ledger.of(reg).record("declared", 9.0, "cuda:0")
    assert mgr.memory_of(mgr.slots["measured"]) == pytest.approx(4.0 * (1 + MEASURED_MARGIN))
    assert mgr.memory_of(mgr.slots["declared"]) == 3.0, "a declared memory_gb wins over a measurement"
    snap = {m["id"]: m for m in model_entries(mgr)}
    assert snap["measured"]["measured_gb"] == 4.0 and snap["measured"]["measured_device"] == "cuda:0"
    assert snap["declared"]["measured_gb"] == 9.0 and snap["declared"]["budget_gb"] == 3.0
    fn = ledger_memory_of(Ledger.of(reg), margin=0.5)
    assert fn("measured", reg.models["measured"]) == pytest.approx(6.0)
