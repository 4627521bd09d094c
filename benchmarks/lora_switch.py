"""LoRA adapter switching on an image model: request latency when every request changes the adapter against requests
that keep one, and the time the switch itself takes in the engine (set_adapters, enable/disable_lora).

    python -m benchmarks.lora_switch [--source DIR] [--loras DIR] [--device cpu] [--size 64x64] [--steps 4]
                                     [--requests 12] [--rounds 4] [--out DIR]

Starts its own `hub serve` with one Diffusers pipeline (default: the demo's tiny-sd) and two adapters, "pixel" and
"ink" (default: made by demo_models.tiny_lora into a temporary folder). Each round sends, one request at a time, a
block of each pattern in an order that rotates between rounds (drift on a shared machine hits all alike):
`base` (no adapter), `same` (pixel every time) and `alternate` (pixel, ink, pixel, ...: a switch before every call).
The engine's GET /stats counts the switches and the seconds spent in them; its log has each switch's own time, whose
median is reported. Writes lora-switch.csv (one row per pattern).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.image_batching import demo_source, engine_stats, serve_registry
from benchmarks.measure import HubClient
from benchmarks.peers import envs_dir
from benchmarks.results import write_csv

ROOT = Path(__file__).resolve().parent.parent
MODEL = "lora-sd"
PATTERNS: dict[str, list[str | None]] = {"base": [None], "same": ["pixel"], "alternate": ["pixel", "ink"]}
SWITCH = re.compile(r"LoRA: \S+ -> \S+ in ([\d.]+) ms")


@dataclass
class LoraSwitchScenario:
    """One pipeline with two adapters, requests one at a time in each pattern."""

    source: str | None = None
    loras: str | None = None  # a folder with pixel/ and ink/ (demo_models.tiny_lora's layout)
    device: str = "cpu"
    size: str = "64x64"
    steps: int = 4
    requests: int = 12  # per pattern and round
    rounds: int = 4


def registry(sc: LoraSwitchScenario, loras: Path, port: int, state: Path) -> str:
    source = sc.source or str(demo_source())
    threads = "cpu_threads = 1\n" if sc.device == "cpu" else ""
    return (f'[hub]\nport = {port}\nstate_dir = {json.dumps(str(state))}\nstart_timeout = "10m"\n\n'
            f'[models.{MODEL}]\ntype = "image"\nengine = "diffusers"\nsource = {json.dumps(source)}\n'
            f'runtime = "process"\n[models.{MODEL}.args]\ndevice = "{sc.device}"\n{threads}'
            f'default_size = "{sc.size}"\ndefault_steps = {sc.steps}\nrequest_timeout = 3600\n'
            f'[models.{MODEL}.loras]\npixel = {json.dumps(str(loras / "pixel"))}\n'
            f'ink = {json.dumps(str(loras / "ink"))}\n')


@contextlib.contextmanager
def started_hub(sc: LoraSwitchScenario, tmp: Path) -> Iterator[tuple[HubClient, Path]]:
    """A `hub serve` with the model loaded; its engine's log file."""
    loras = Path(sc.loras) if sc.loras else tmp / "loras"
    if not sc.loras:
        python = envs_dir() / "diffusers" / "bin" / "python"
        base = sc.source or str(demo_source())
        proc = subprocess.run([str(python), "-m", "demo_models.tiny_lora", "--base", base, str(loras)], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"demo_models.tiny_lora failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    with serve_registry(lambda port, state: registry(sc, loras, port, state), tmp, [MODEL]) as hub:
        yield hub, tmp / "state" / "logs" / f"{MODEL}.log"


def run_lora_switch(sc: LoraSwitchScenario) -> list[dict[str, Any]]:
    """Latencies per pattern, the engine's switch counts and times; one row per pattern."""
    seconds: dict[str, list[float]] = {p: [] for p in PATTERNS}
    switches: dict[str, list[float]] = {p: [0, 0.0] for p in PATTERNS}  # count, seconds
    with tempfile.TemporaryDirectory(prefix="lora-switch-") as tmp, started_hub(sc, Path(tmp)) as (hub, log), \
            httpx.Client(headers=hub.headers, timeout=hub.timeout) as http:
        def one(lora: str | None, i: int) -> float:
            body = {"model": MODEL, "prompt": f"a lighthouse {i}", "size": sc.size, "num_inference_steps": sc.steps,
                    "seed": i, **({"lora": lora} if lora else {})}
            t0 = time.perf_counter()
            r = http.post(hub.v1 + "/images/generations", json=body)
            took = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
            return took

        one("ink", 0)  # warm up: the first call of a pipeline, and of each adapter, pays once
        one(None, 0)
        names = list(PATTERNS)
        for rnd in range(sc.rounds):
            for pattern in names[rnd % len(names):] + names[:rnd % len(names)]:
                cycle = PATTERNS[pattern]
                one(cycle[-1], 0)  # the state before the block: the block's first request switches if it must
                before = engine_stats(hub, MODEL) or {}
                seconds[pattern] += [one(cycle[i % len(cycle)], i + 1) for i in range(sc.requests)]
                after = engine_stats(hub, MODEL) or {}
                switches[pattern][0] += after.get("lora_switches", 0) - before.get("lora_switches", 0)
                switches[pattern][1] += after.get("lora_switch_s", 0.0) - before.get("lora_switch_s", 0.0)
        each = [float(m) for m in SWITCH.findall(log.read_text())] if log.exists() else []
    rows = []
    for pattern, times in seconds.items():
        count, spent = switches[pattern]
        rows.append({"pattern": pattern, "requests": len(times), "device": sc.device, "size": sc.size,
                     "steps": sc.steps, "p50_s": round(statistics.median(times), 4),
                     "mean_s": round(statistics.fmean(times), 4), "switches": int(count),
                     "switch_ms_mean": round(spent / count * 1000, 3) if count else None,
                     "switch_ms_median_all": round(statistics.median(each), 3) if each else None})
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    by = {r["pattern"]: r for r in rows}
    lines = [f"{r['pattern']:>9}: p50 {r['p50_s'] * 1000:.1f} ms over {r['requests']} requests, {r['switches']} "
             f"switches" + (f" ({r['switch_ms_mean']:.2f} ms each)" if r["switch_ms_mean"] is not None else "")
             for r in rows]
    lines.append(f"alternate - same: {(by['alternate']['p50_s'] - by['same']['p50_s']) * 1000:+.1f} ms per request "
                 f"(p50); one switch in the engine: {rows[0]['switch_ms_median_all']} ms (median of all switches)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line of the LoRA switching benchmark."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.lora_switch", description=__doc__.splitlines()[0])
    p.add_argument("--source", default=None, help="a Diffusers pipeline (default: the demo's tiny-sd)")
    p.add_argument("--loras", default=None, help="a folder with pixel/ and ink/ adapters for it (default: made by "
                                                 "demo_models.tiny_lora from the demo's tiny-sd)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="64x64")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--requests", type=int, default=12, help="requests per pattern and round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", default="artifacts/benchmarks")
    a = p.parse_args(argv)
    sc = LoraSwitchScenario(source=a.source, loras=a.loras, device=a.device, size=a.size, steps=a.steps,
                            requests=a.requests, rounds=a.rounds)
    try:
        rows = run_lora_switch(sc)
    except (RuntimeError, httpx.HTTPError) as err:
        print(f"lora_switch: {err}", file=sys.stderr)
        return 1
    print(report(rows))
    print(f"written: {write_csv(rows, Path(a.out) / 'lora-switch.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
