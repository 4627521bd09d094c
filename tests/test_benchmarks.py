"""The benchmarks against a real hub whose engines are the test responder (`command` engines), and the
router-overhead script (direct, hub, the bare pass-through, and vllm-router and LiteLLM's proxy when their
environments exist)."""

from __future__ import annotations

import csv
import math
import os

import pytest

from benchmarks import image_grid
from benchmarks.image_batching import report as image_report
from benchmarks.image_batching import run_image_batching, run_previews
from benchmarks.images import run_images
from benchmarks.lifecycle import run_cold_start, run_swap
from benchmarks.load import main as load_main
from benchmarks.measure import HubClient
from benchmarks.memory import measure_memory
from benchmarks.router_overhead import litellm_python, report, run_router_overhead, vllm_router_exe
from benchmarks.run import main as run_main
from benchmarks.run import run_scenario
from benchmarks.scenarios import (
    ColdStartScenario,
    ImageBatchingScenario,
    ImagePreviewScenario,
    ImageScenario,
    MemoryScenario,
    RouterOverheadScenario,
    SwapScenario,
    TextScenario,
)
from benchmarks.text import run_text
from hub.ledger import MEASURED_MARGIN
from tests.conftest import DEMO_MODELS, ENVS_DIR, require, responder_command

PROMPT = "one two three four five six"  # the responder echoes it: "echo: one ... six" is 7 chunks


def model(mid: str, kind: str = "text", *extra: str, memory: float | None = None) -> str:
    mem = f"memory_gb = {memory}\n" if memory is not None else ""
    return (f'[models.{mid}]\ntype = "{kind}"\nengine = "command"\n{mem}[models.{mid}.args]\n'
            f'command = {responder_command(*extra)}\n')


def test_text_benchmark_measures_streams_at_each_concurrency(hub_factory) -> None:
    hub = hub_factory(model("echo", "text", "--chunk-delay", "0.02"))
    sc = TextScenario(name="t", model="echo", concurrency=[1, 3], requests=4, prompt=PROMPT, max_tokens=16)
    summary, per_request = run_text(HubClient(hub.v1), sc)
    assert [r["concurrency"] for r in summary] == [1, 3]
    for row in summary:
        assert row["failed"] == 0 and row["completed"] == 4
        assert row["output_tokens"] == 7 * 4, "one token per streamed chunk (the responder reports no usage)"
        assert row["itl_ms_p50"] >= 15, "chunks are 20 ms apart"
        assert row["tpot_ms_p50"] >= 15
        assert 0 < row["ttft_ms_p50"] < row["e2el_ms_p50"]
        assert row["output_tok_s"] > 0
    assert len(per_request) == 8 and all(r["ok"] for r in per_request)


def test_image_benchmark_by_size_steps_and_n(hub_factory) -> None:
    hub = hub_factory(model("pix", "image"))
    sc = ImageScenario(name="i", model="pix", sizes=["16x16", "32x32"], steps=[2], n=[1, 3], repetitions=2)
    rows = run_images(HubClient(hub.v1), sc)
    assert [(r["size"], r["n"]) for r in rows] == [("16x16", 1), ("16x16", 3), ("32x32", 1), ("32x32", 3)]
    for r in rows:
        assert r["failed"] == 0 and r["error"] is None
        assert r["s_per_image"] > 0 and r["images_per_s"] > 0
        assert r["s_per_image"] == pytest.approx(r["s_per_request_mean"] / r["n"])


def test_preview_benchmark_compares_streamed_and_plain(hub_factory) -> None:
    hub = hub_factory(model("pix", "image", "--step-delay", "0.01"))
    sc = ImagePreviewScenario(name="p", model="pix", sizes=["16x16"], steps=4, partial_images=2, repetitions=2)
    rows = run_previews(HubClient(hub.v1), sc)
    assert len(rows) == 1 and rows[0]["failed"] == 0
    r = rows[0]
    assert (r["partials_seen"], r["progress_lines"]) == (2, 4), "the stream was read to its end"
    assert r["stream_s_p50"] > 0.04 and r["plain_s_p50"] > 0, "4 steps of 10 ms each"
    assert isinstance(r["preview_cost_pct"], float), "the median of the pairs' ratios"
    assert r["engine_callback_pct"] is None, "the test responder reports no engine stats"


@pytest.mark.engine
def test_image_batching_benchmark_on_the_tiny_model() -> None:
    require((ENVS_DIR / "diffusers" / "bin" / "python").exists(), "the diffusers engine environment is missing")
    require((DEMO_MODELS / "tiny-sd" / "model_index.json").exists(), "the tiny model is missing")
    sc = ImageBatchingScenario(name="b", size="64x64", steps=2, concurrency=4, requests=8, max_batch=4, rounds=1,
                               warmup=1)
    rows, previews = run_image_batching(sc, ImagePreviewScenario(name="p", model="x", sizes=["64x64"], steps=3,
                                                                 repetitions=1))
    off, on = rows
    assert (off["variant"], on["variant"]) == ("batch-off", "batch-on")
    assert off["failed"] == on["failed"] == 0 and off["images"] == on["images"] == 8
    assert off["pipeline_calls"] == 8 and on["pipeline_calls"] < 8, "batching made fewer pipeline calls"
    assert on["images_per_s"] > 0 and on["speedup"] == pytest.approx(on["images_per_s"] / off["images_per_s"])
    assert on["speedup_median_of_rounds"] > 0
    assert previews[0]["model"] == "batch-off" and previews[0]["partials_seen"] == 2
    assert 0 <= previews[0]["engine_callback_pct"] < 100, "the engine timed its step callback"
    assert "batching on / off" in image_report(rows, previews)


@pytest.mark.engine
def test_image_grid_benchmark_on_the_tiny_model() -> None:
    require((ENVS_DIR / "diffusers" / "bin" / "python").exists(), "the diffusers engine environment is missing")
    require((DEMO_MODELS / "tiny-sd" / "model_index.json").exists(), "the tiny model is missing")
    rows = image_grid.measure(seeds=2, steps=(1, 2), size="64x64", rounds=1, concurrency=4, max_batch=4)
    ways = {r["way"]: r for r in rows}
    assert set(ways) == set(image_grid.WAYS) and all(r["images"] == 4 for r in rows)
    assert ways["one-by-one"]["pipeline_calls"] == 4 and ways["grid-no-batching"]["pipeline_calls"] == 4
    assert ways["grid"]["pipeline_calls"] < 4, "the grid's cells of one shape went to the engine together"
    s = image_grid.summary(rows)
    assert s["one-by-one"]["ratio"] == 1 and s["grid"]["images_per_s"] > 0


def test_memory_benchmark_fills_the_ledger_that_budgets_and_ps_shows(hub_factory) -> None:
    hub = hub_factory("[hub]\nmemory_budget_gb = 1\n" + model("a") + model("b", "image"))
    client = HubClient(hub.v1)
    rows = measure_memory(client, MemoryScenario(name="m", models=["a", "b"], requests=1))
    by_model = {r["model"]: r for r in rows if r["ledger"]}
    assert set(by_model) == {"a", "b"}
    for mid, r in by_model.items():
        assert r["source"] == "rss" and r["device"] == "cpu"
        assert 5 < r["peak_mb"] < 2000, "a Python server's resident memory"
        entry = hub.models()[mid]
        assert entry["measured_gb"] == pytest.approx(r["peak_mb"] / 1024, abs=1e-4), "kept to 0.1 MB"
        assert entry["measured_device"] == "cpu"
        assert entry["budget_gb"] == pytest.approx(entry["measured_gb"] * (1 + MEASURED_MARGIN), rel=1e-3)
    ps = hub.cli("ps")
    assert ps.returncode == 0, ps.stderr
    line = next(x for x in ps.stdout.splitlines() if x.startswith("a "))
    assert f"- / {by_model['a']['peak_mb'] / 1024:.2f} GB" in line, "declared / measured"

    # Measured peaks that do not fit together: a swap evicts the other model.
    client.record_memory("a", 0.6, "cpu", "test")
    client.record_memory("b", 0.6, "cpu", "test")
    swap = run_swap(client, SwapScenario(name="s", model_a="a", model_b="b", image_size="16x16"))
    assert swap[0]["a_evicted"] and swap[0]["a_state_after"] == "stopped"
    assert swap[0]["swap_first_output_s"] > 0 and swap[0]["b_budget_gb"] == pytest.approx(0.66)


def test_cold_start_is_slower_than_warm(hub_factory) -> None:
    hub = hub_factory(model("slow", "text", "--start-delay", "1"))
    rows = run_cold_start(HubClient(hub.v1), ColdStartScenario(name="c", model="slow", repetitions=2))
    assert len(rows) == 2
    for r in rows:
        assert r["cold_first_output_s"] > 1.0 > r["warm_first_output_s"]
        assert r["engine_ready_s"] >= 1.0
    assert rows[1]["starts"] == 2, "each repetition starts the model again"


def _router_overhead(peers: list[str], concurrency: list[int]) -> tuple[list[dict], dict]:
    sc = RouterOverheadScenario(name="ro", requests=20, concurrency=concurrency, rounds=2, warmup=4, peers=peers)
    rows = run_router_overhead(sc, log=lambda _: None)
    return rows, {(r["mode"], r["concurrency"], r["target"]): r for r in rows}


def test_router_overhead_direct_hub_and_bare() -> None:
    rows, by = _router_overhead(["bare"], [1, 4])
    assert [(r["concurrency"], r["mode"], r["target"]) for r in rows] == [
        (c, m, t) for c in (1, 4) for m in ("plain", "stream") for t in ("direct", "hub", "bare")]
    for r in rows:
        assert r["requests"] == {1: 20, 4: 24}[r["concurrency"]] and r["rounds"] == 2, "3x c per round at least"
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["req_s"] > 0 and r["gen_cpu_us"] > 0 and r["cpu_us"] > 0
    for c in (1, 4):
        assert "first_p50_ms" not in by[("plain", c, "hub")]
        stream = by[("stream", c, "hub")]
        assert 0 < stream["first_p50_ms"] <= stream["p50_ms"], "the first chunk comes before the end"
        assert math.isfinite(stream["added_first_p50_ms"])
        hub, bare = by[("plain", c, "hub")], by[("plain", c, "bare")]
        assert math.isfinite(hub["added_p50_ms"]) and "x_bare" in hub and "x_bare" not in bare
        if bare["added_p50_ms"] > 0:
            assert hub["x_bare"] == pytest.approx(hub["added_p50_ms"] / bare["added_p50_ms"])
    if len(os.sched_getaffinity(0)) >= 2:
        assert by[("plain", 1, "hub")]["cores"] != by[("plain", 1, "direct")]["cores"], "proxies apart from the engine"
        assert by[("plain", 1, "hub")]["cores"] == by[("plain", 1, "bare")]["cores"]
    text = report(rows)
    assert "hub added p50 at c=1 <= 0.5 ms" in text and "within 1.3x of bare at c=4" in text
    assert "hub added first chunk p50 at c=1" in text


def test_load_benchmark_small(tmp_path, capsys) -> None:
    out = tmp_path / "load.csv"
    assert load_main(["--streams", "12", "--rounds", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "errors: 0" in printed and "hub adds at 12 streams" in printed
    with out.open() as f:
        direct, hub = list(csv.DictReader(f))
    assert (direct["target"], hub["target"]) == ("direct", "hub")
    for r in (direct, hub):
        assert int(r["requests"]) == 24 and int(r["errors"]) == 0
        assert 0 < float(r["ttft_ms_p50"]) <= float(r["e2el_ms_p50"]), "the first chunk comes before the end"
    before, peak, after = (float(hub[f"hub_rss_{k}_mb"]) for k in ("before", "peak", "after"))
    assert 20 < before <= peak and after <= peak
    assert float(hub["added_e2el_p50_ms"]) == pytest.approx(float(hub["e2el_ms_p50"]) - float(direct["e2el_ms_p50"]))


def test_router_overhead_with_vllm_router() -> None:
    require(vllm_router_exe().exists(), "vllm-router's environment is missing: python -m benchmarks.router_overhead "
                                        "--setup-vllm-router")
    rows, by = _router_overhead(["vllm-router"], [2])
    assert [r["target"] for r in rows] == ["direct", "hub", "vllm-router"] * 2
    for mode in ("plain", "stream"):
        vr = by[(mode, 2, "vllm-router")]
        assert vr["requests"] == 20 and vr["p50_ms"] > 0 and vr["req_s"] > 0
        assert "x_vllm_router" in by[(mode, 2, "hub")]
    assert by[("stream", 2, "vllm-router")]["first_p50_ms"] > 0
    assert "within 3x of vllm-router at c=2" in report(rows)


def test_router_overhead_with_litellm() -> None:
    require(litellm_python().exists(), "LiteLLM's environment is missing: python -m benchmarks.router_overhead "
                                       "--setup-litellm")
    rows, by = _router_overhead(["litellm"], [1])
    assert [r["target"] for r in rows] == ["direct", "hub", "litellm"] * 2
    lite, hub = by[("plain", 1, "litellm")], by[("plain", 1, "hub")]
    assert lite["requests"] == 20 and lite["p50_ms"] > 0
    ratio = hub["x_litellm"]
    assert math.isnan(ratio) or ratio == pytest.approx(hub["added_p50_ms"] / lite["added_p50_ms"])
    assert by[("stream", 1, "litellm")]["first_p50_ms"] > 0


def test_router_overhead_skips_a_missing_peer(monkeypatch) -> None:
    monkeypatch.setenv("HUB_ENVS_DIR", "/nonexistent")
    said: list[str] = []
    sc = RouterOverheadScenario(name="ro", requests=4, concurrency=[1], modes=["plain"], rounds=1, warmup=1,
                                peers=["litellm"])
    rows = run_router_overhead(sc, log=said.append)
    assert [r["target"] for r in rows] == ["direct", "hub"]
    assert any("skipping litellm: its environment is missing" in s and "--setup-litellm" in s for s in said)


def test_runner_lists_runs_and_rejects_unknown_names(hub_factory, capsys) -> None:
    assert run_main(["--list"]) == 0
    assert "demo-text" in capsys.readouterr().out
    assert run_main(["--only", "nope"]) == 1
    assert "unknown scenario(s) nope (valid: demo-text" in capsys.readouterr().err
    hub = hub_factory(model("echo"))
    rows = run_scenario(HubClient(hub.v1), TextScenario(name="t", model="echo", concurrency=[2], requests=2))
    assert rows[0]["completed"] == 2
