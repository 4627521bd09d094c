"""Cold start and swap: a request to a stopped model -> its first token (or image); a swap A -> B under a budget;
and, to compare with the cold start through the hub, the engine started alone from the same command line the hub
would use (launch -> GET health 200). As a script, CSV on stdout:

    python -m benchmarks.lifecycle --config models.demo.toml --model smollm2 --runs 3

With --wake, a model woken from sleep against the same model started cold, in one hub and one run, rounds
interleaved (two registrations of the model: one with sleep = true and a 1 s ttl, one without):

    python -m benchmarks.lifecycle --config models.demo.toml --model tiny-sd --runs 5 --wake

It runs where `hub engines setup` and `hub demo prepare` were run (it uses the registry's envs and state dirs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.measure import HubClient, generate_images, run_sync, stream_chat
from benchmarks.scenarios import ColdStartScenario, SwapScenario
from hub.engines import get_engine
from hub.engines.base import LaunchContext
from hub.procs import free_port, stop_process, wait_http
from hub.registry import load_registry
from hub.runtimes.process import ProcessRuntime


async def first_output_s(hub: HubClient, entry: dict[str, Any], sc: ColdStartScenario | SwapScenario) -> float:
    """Seconds from sending a small request to its first token (text) or its whole image (image)."""
    async with hub.async_client(2) as client:
        if entry["type"] == "image":
            r = await generate_images(client, hub.v1, entry["id"], "a small boat", sc.image_size, 1,
                                      sc.image_steps, sc.steps_field)
            if not r["ok"]:
                raise RuntimeError(f"request to {entry['id']!r} failed: {r['error']}")
            return r["seconds"]
        rec = await stream_chat(client, hub.v1, entry["id"], "Say hello.", sc.max_tokens)
        if not rec.ok or rec.ttft is None:
            raise RuntimeError(f"request to {entry['id']!r} failed: {rec.error or 'no token came back'}")
        return rec.ttft


def run_cold_start(hub: HubClient, sc: ColdStartScenario) -> list[dict[str, Any]]:
    """One row per repetition: cold and warm seconds to first output, and the engine's own start-to-ready time."""
    rows = []
    for i in range(sc.repetitions):
        entry = hub.model(sc.model)
        if entry["state"] != "stopped":
            hub.unload(sc.model)
        cold = run_sync(first_output_s(hub, entry, sc))
        after = hub.model(sc.model)
        warm = run_sync(first_output_s(hub, entry, sc))
        rows.append({"scenario": sc.name, "model": sc.model, "type": entry["type"], "repetition": i,
                     "cold_first_output_s": cold, "engine_ready_s": after.get("ready_seconds"),
                     "warm_first_output_s": warm, "starts": after.get("starts")})
    return rows


def run_swap(hub: HubClient, sc: SwapScenario) -> list[dict[str, Any]]:
    """One row per repetition: with A loaded and B stopped, seconds to B's first output; was A evicted?"""
    rows = []
    for i in range(sc.repetitions):
        if hub.model(sc.model_b)["state"] != "stopped":
            hub.unload(sc.model_b)
        hub.load(sc.model_a)
        entry_b = hub.model(sc.model_b)
        swap = run_sync(first_output_s(hub, entry_b, sc))
        models = hub.models()
        a, b = models[sc.model_a], models[sc.model_b]
        rows.append({"scenario": sc.name, "model_a": sc.model_a, "model_b": sc.model_b, "repetition": i,
                     "swap_first_output_s": swap, "b_engine_ready_s": b.get("ready_seconds"),
                     "a_state_after": a["state"], "a_evicted": a["state"] == "stopped",
                     "a_budget_gb": a.get("budget_gb"), "b_budget_gb": b.get("budget_gb")})
    return rows


def engine_alone_s(config: Path, model: str, timeout: float, log: Path) -> float:
    """Seconds from launching the model's engine alone (the process runtime's command line) to its health path
    answering 200."""
    reg = load_registry(config)
    port = free_port()
    spec = get_engine(reg.models[model].engine).launch(LaunchContext(model, reg.models[model], reg, port))
    argv, env = ProcessRuntime(log.parent, reg.envs_dir).command_line(spec)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}{spec.health_path}", proc, timeout, log)
        return time.monotonic() - t0
    finally:
        stop_process(proc)


def wake_registry(config: Path, model: str) -> str:
    """A registry with two registrations of `model`: `<model>-sleep` (sleep = true, ttl 1 s) and `<model>-cold`."""
    reg = load_registry(config)
    m = reg.models[model]
    source = LaunchContext(model, m, reg, 0).source()

    def value(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    args = "".join(f"{k} = {value(v)}\n" for k, v in m.args.items() if v is not None)
    out = "[hub]\nstart_timeout = \"5m\"\n"
    for name, extra in ((f"{model}-sleep", "sleep = true\nttl = 1\n"), (f"{model}-cold", "")):
        out += (f"\n[models.{name}]\ntype = \"{m.type}\"\nengine = \"{m.engine}\"\nsource = {json.dumps(source)}\n"
                f"runtime = \"process\"\n{extra}[models.{name}.args]\n{args}")
    return out


def run_wake_vs_cold(hub: HubClient, model: str, runs: int, row: Callable[[str, int, float], None],
                     timeout: float = 60) -> None:
    """`runs` rounds, each a wake of `<model>-sleep` (asleep after its ttl) then a cold start of `<model>-cold`;
    seconds to the first output through the hub, and the hub's own wake or start time (ready_seconds)."""
    sc = ColdStartScenario(name="wake", model=model)
    sleepy, cold = f"{model}-sleep", f"{model}-cold"
    run_sync(first_output_s(hub, hub.model(sleepy), sc))  # its first start (cold): not measured
    for i in range(1, runs + 1):
        deadline = time.monotonic() + timeout
        while hub.model(sleepy)["state"] != "sleeping":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sleepy!r} did not fall asleep within {timeout:g}s")
            time.sleep(0.2)
        row("wake_to_first_output", i, run_sync(first_output_s(hub, hub.model(sleepy), sc)))
        row("wake_engine_ready", i, hub.model(sleepy)["ready_seconds"])
        if hub.model(cold)["state"] != "stopped":
            hub.unload(cold)
        row("cold_to_first_output", i, run_sync(first_output_s(hub, hub.model(cold), sc)))
        row("cold_engine_ready", i, hub.model(cold)["ready_seconds"])
    if (wakes := hub.model(sleepy).get("wakes")) != runs:
        raise RuntimeError(f"{sleepy!r} was woken {wakes} times, not {runs}: see the hub's log")


def main(argv: list[str] | None = None) -> int:
    """Measure and print CSV rows (metric, run, seconds), then one median row per metric."""
    p = argparse.ArgumentParser(description="cold start: the engine alone, and through the hub")
    p.add_argument("--config", type=Path, default=Path("models.demo.toml"))
    p.add_argument("--model", default="smollm2")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--wake", action="store_true", help="a wake from sleep against a cold start, in one hub")
    args = p.parse_args(argv)
    config = args.config.resolve()
    out = csv.writer(sys.stdout)
    out.writerow(["metric", "run", "seconds"])
    if args.wake:
        return wake_main(config, args.model, args.runs, out)
    results: dict[str, list[float]] = {"engine_alone_to_health": [], "hub_cold_to_first_output": []}
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        for i in range(args.runs):
            s = engine_alone_s(config, args.model, args.timeout, Path(tmp) / f"engine-{i}.log")
            results["engine_alone_to_health"].append(s)
            out.writerow(["engine_alone_to_health", i + 1, f"{s:.2f}"])
            sys.stdout.flush()
        port = free_port()
        log = Path(tmp) / "hub.log"
        hub = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--config", str(config), "--port",
                                str(port), "--no-ui"], stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", hub, 60, log)
            client = HubClient(f"http://127.0.0.1:{port}/v1")
            rows = run_cold_start(client, ColdStartScenario(name="cold", model=args.model, repetitions=args.runs))
            for i, row in enumerate(rows):
                results["hub_cold_to_first_output"].append(row["cold_first_output_s"])
                out.writerow(["hub_cold_to_first_output", i + 1, f"{row['cold_first_output_s']:.2f}"])
        finally:
            stop_process(hub)
    for metric, values in results.items():
        out.writerow([metric, "median", f"{statistics.median(values):.2f}"])
    return 0


def wake_main(config: Path, model: str, runs: int, out: Any) -> int:
    """--wake: one hub over wake_registry(); CSV rows, then one median row per metric."""
    reg = load_registry(config)
    results: dict[str, list[float]] = {}

    def row(metric: str, run: int, seconds: float) -> None:
        results.setdefault(metric, []).append(seconds)
        out.writerow([metric, run, f"{seconds:.3f}"])
        sys.stdout.flush()

    with tempfile.TemporaryDirectory(prefix="wake-") as tmp:
        cfg, log, port = Path(tmp) / "models.toml", Path(tmp) / "hub.log", free_port()
        cfg.write_text(wake_registry(config, model))
        env = {**os.environ, "HUB_STATE_DIR": str(reg.state_dir), "HUB_ENVS_DIR": str(reg.envs_dir)}
        hub = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--config", str(cfg), "--port", str(port),
                                "--no-ui"], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", hub, 60, log)
            run_wake_vs_cold(HubClient(f"http://127.0.0.1:{port}/v1"), model, runs, row)
        finally:
            stop_process(hub)
    for metric, values in results.items():
        out.writerow([metric, "median", f"{statistics.median(values):.3f}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
