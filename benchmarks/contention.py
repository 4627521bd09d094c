"""Contention: two models that do not fit together, called alternately (A, B, A, B, ...) by several clients, with
the anti-thrash policy on (models take turns in runs) and off (max_run = min_residency = 0: strict arrival order,
a swap whenever the next request is for the other model), in one run. Per policy: requests served and failed,
model starts (from /hub/models `starts`; swaps = starts - 1, the budget holds one model), total time, latency.

    python -m benchmarks.contention [--clients 4] [--requests 8] [--start-delay 2] [--delay 0.2] [--out FILE.csv]

The engines are the project's test responder (tests/responder.py) as `command` engines with an artificial start
delay (--start-delay) and answer time (--delay), under a budget that holds one of them; each policy gets its own
`hub serve`, started the same way. Client i sends its requests to A, B, A, ... starting with A for even i and B for
odd i, each after the previous one's answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.metrics import percentile
from benchmarks.results import write_csv
from benchmarks.scenarios import ContentionScenario
from hub.config import HubSettings
from hub.procs import free_port, stop_process, wait_http

ROOT = Path(__file__).resolve().parent.parent
RESPONDER = ROOT / "tests" / "responder.py"
MODELS = ("a", "b")


def registry(port: int, state: Path, sc: ContentionScenario, max_run: float | None,
             min_residency: float | None) -> str:
    """A registry of two responder models of 6 GB under a 10 GB budget, with this policy (None: the default)."""
    text = f"[hub]\nport = {port}\nstate_dir = {json.dumps(str(state))}\nmemory_budget_gb = 10\n"
    if max_run is not None:
        text += f"max_run = {max_run}\n"
    if min_residency is not None:
        text += f"min_residency = {min_residency}\n"
    for mid in MODELS:
        cmd = [sys.executable, str(RESPONDER), "--port", "{port}", "--model", mid, "--start-delay",
               str(sc.start_delay), "--delay", str(sc.delay)]
        text += f'\n[models.{mid}]\ntype = "text"\nengine = "command"\nmemory_gb = 6\n'
        text += f'[models.{mid}.args]\ncommand = {json.dumps(cmd)}\n'
    return text


@contextlib.contextmanager
def started_hub(tmp: Path, text: str, port: int) -> Iterator[str]:
    """A `hub serve` of the registry `text`; yields its root URL."""
    cfg = tmp / "models.toml"
    cfg.write_text(text)
    log = tmp / "hub.log"
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--config", str(cfg), "--no-ui"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                            env={**os.environ, "HUB_STATE_DIR": str(tmp / "state")})
    try:
        root = f"http://127.0.0.1:{port}"
        wait_http(root + "/health", proc, 60, log)
        yield root
    finally:
        stop_process(proc)


async def alternate(root: str, clients: int, requests: int) -> tuple[list[float], list[str]]:
    """Every client's requests (A, B, A, ... or B, A, ...), one after the other; latencies and error lines."""
    latencies: list[float] = []
    errors: list[str] = []

    async def client(i: int, http: httpx.AsyncClient) -> None:
        for r in range(requests):
            model = MODELS[(i + r) % 2]
            body = {"model": model, "messages": [{"role": "user", "content": f"client {i} request {r}"}]}
            t0 = time.perf_counter()
            resp = await http.post(root + "/v1/chat/completions", json=body)
            if resp.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors.append(f"{model}: HTTP {resp.status_code}: {resp.text[:200]}")

    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10)) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return latencies, errors


def run_policy(sc: ContentionScenario, policy: str, max_run: float | None, min_residency: float | None
               ) -> dict[str, Any]:
    """One row: the alternating workload against a fresh hub with this policy (None: the hub's default)."""
    with tempfile.TemporaryDirectory(prefix=f"hub-contention-{policy}-") as d:
        tmp, port = Path(d), free_port()
        with started_hub(tmp, registry(port, tmp / "state", sc, max_run, min_residency), port) as root:
            t0 = time.perf_counter()
            latencies, errors = asyncio.run(alternate(root, sc.clients, sc.requests))
            total = time.perf_counter() - t0
            models = {m["id"]: m for m in httpx.get(root + "/hub/models", timeout=10).json()["data"]}
    starts = sum(models[m]["starts"] for m in MODELS)
    defaults = HubSettings()
    return {"scenario": sc.name, "policy": policy,
            "max_run_s": defaults.max_run if max_run is None else max_run,
            "min_residency_s": defaults.min_residency if min_residency is None else min_residency,
            "clients": sc.clients, "requests": sc.clients * sc.requests, "served": len(latencies),
            "failed": len(errors), "starts": starts, "swaps": max(0, starts - 1), "total_s": total,
            "latency_p50_s": percentile(latencies, 50) if latencies else None,
            "latency_max_s": max(latencies, default=None), "start_delay_s": sc.start_delay,
            "answer_delay_s": sc.delay, "first_error": errors[0] if errors else None}


def run_contention(sc: ContentionScenario) -> list[dict[str, Any]]:
    """A row per policy (on: the scenario's max_run and min_residency, else the hub's defaults; then off), each
    against its own hub."""
    return [run_policy(sc, "on", sc.max_run, sc.min_residency), run_policy(sc, "off", 0.0, 0.0)]


def report(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the rows."""
    lines = [f"{'policy':<7} {'max_run':>8} {'min_res':>8} {'served':>7} {'failed':>7} {'starts':>7} {'swaps':>6} "
             f"{'total s':>8} {'p50 s':>7} {'max s':>7}"]
    for r in rows:
        p50 = f"{r['latency_p50_s']:7.2f}" if r["latency_p50_s"] is not None else f"{'-':>7}"
        worst = f"{r['latency_max_s']:7.2f}" if r["latency_max_s"] is not None else f"{'-':>7}"
        lines.append(f"{r['policy']:<7} {r['max_run_s']:8g} {r['min_residency_s']:8g} {r['served']:>7} "
                     f"{r['failed']:>7} {r['starts']:>7} {r['swaps']:>6} {r['total_s']:8.1f} {p50} {worst}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line of the contention benchmark."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.contention", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=8, help="requests per client")
    p.add_argument("--start-delay", type=float, default=2.0, help="the engines' artificial start delay (seconds)")
    p.add_argument("--delay", type=float, default=0.2, help="the engines' answer time (seconds)")
    p.add_argument("--max-run", type=float, help="max_run of the policy-on hub (default: the hub's)")
    p.add_argument("--min-residency", type=float, help="min_residency of the policy-on hub (default: the hub's)")
    p.add_argument("--out", default="artifacts/benchmarks/contention.csv")
    a = p.parse_args(argv)
    sc = ContentionScenario(name="contention", clients=a.clients, requests=a.requests, start_delay=a.start_delay,
                            delay=a.delay, max_run=a.max_run, min_residency=a.min_residency)
    try:
        rows = run_contention(sc)
    except RuntimeError as err:
        print(f"contention: {err}", file=sys.stderr)
        return 1
    print(report(rows))
    print(f"written: {write_csv(rows, a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
