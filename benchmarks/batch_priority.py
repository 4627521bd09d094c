"""Batch priority: interactive chat latency on a model alone, while a batch runs on it (its lines are background
work), and while the same lines come as ordinary requests from a script (the peer: no priority), in one run against
one hub. Per phase: p50, p95 and max latency of the interactive requests, their p50 over the alone phase's, and the
lines the batch (or the script) got done meanwhile.

    python -m benchmarks.batch_priority [--lines 500] [--requests 20] [--delay 0.2] [--places 4] [--flood 16]
                                        [--out FILE.csv]

The engine is the project's test responder (tests/responder.py) as a `command` engine that answers after --delay
seconds, with max_concurrency --places. It sleeps rather than computes: the phases measure the hub's queueing (does
an interactive request wait behind batch work?), not an engine's throughput shared between requests (a real engine
serves each request slower while it batches more of them; measure that on a GPU box with a real model).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.contention import RESPONDER, started_hub
from benchmarks.metrics import percentile
from benchmarks.results import write_csv
from hub.procs import free_port

MODEL = "m"


def registry(port: int, state: Path, delay: float, places: int) -> str:
    """One responder model answering after `delay` seconds, `places` requests at once."""
    cmd = [sys.executable, str(RESPONDER), "--port", "{port}", "--model", MODEL, "--delay", str(delay)]
    return (f"[hub]\nport = {port}\nstate_dir = {json.dumps(str(state))}\n\n[models.{MODEL}]\ntype = \"text\"\n"
            f"engine = \"command\"\nmax_concurrency = {places}\nmax_queue = 100000\n"
            f"[models.{MODEL}.args]\ncommand = {json.dumps(cmd)}\n")


def line(i: int) -> dict[str, Any]:
    return {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"batch line {i}"}]}}


async def interactive(http: httpx.AsyncClient, v1: str, requests: int) -> list[float]:
    """`requests` chat requests one after the other; their latencies."""
    out = []
    for i in range(requests):
        t0 = time.perf_counter()
        r = await http.post(v1 + "/chat/completions",
                            json={"model": MODEL, "messages": [{"role": "user", "content": f"interactive {i}"}]})
        r.raise_for_status()
        out.append(time.perf_counter() - t0)
    return out


async def batch_phase(http: httpx.AsyncClient, v1: str, lines: int, requests: int) -> tuple[list[float], int]:
    """Interactive requests while a batch of `lines` runs (cancelled after them); latencies, lines done."""
    data = "".join(json.dumps(line(i)) + "\n" for i in range(lines)).encode()
    f = (await http.post(v1 + "/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})).json()
    b = (await http.post(v1 + "/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                                "completion_window": "24h"})).json()
    while (await http.get(v1 + f"/batches/{b['id']}")).json()["request_counts"]["completed"] < 1:
        await asyncio.sleep(0.05)  # the batch is under way
    before = (await http.get(v1 + f"/batches/{b['id']}")).json()["request_counts"]["completed"]
    latencies = await interactive(http, v1, requests)
    after = (await http.get(v1 + f"/batches/{b['id']}")).json()["request_counts"]["completed"]
    await http.post(v1 + f"/batches/{b['id']}/cancel")
    while (await http.get(v1 + f"/batches/{b['id']}")).json()["status"] != "cancelled":
        await asyncio.sleep(0.05)
    return latencies, after - before


async def flood_phase(http: httpx.AsyncClient, v1: str, lines: int, requests: int,
                      flood: int) -> tuple[list[float], int]:
    """Interactive requests while `flood` clients send the same lines as ordinary requests; latencies, lines done."""
    todo, done, stop = list(range(lines)), [0], asyncio.Event()

    async def client() -> None:
        while todo and not stop.is_set():
            await http.post(v1 + "/chat/completions", json=line(todo.pop())["body"])
            done[0] += 1

    clients = [asyncio.create_task(client()) for _ in range(flood)]
    while done[0] < 1:
        await asyncio.sleep(0.05)
    before = done[0]
    latencies = await interactive(http, v1, requests)
    after = done[0]
    stop.set()
    await asyncio.gather(*clients)
    return latencies, after - before


def row(phase: str, latencies: list[float], alone_p50: float, lines_done: int | None, a: argparse.Namespace
        ) -> dict[str, Any]:
    p50 = percentile(latencies, 50)
    return {"phase": phase, "requests": len(latencies), "p50_s": p50, "p95_s": percentile(latencies, 95),
            "max_s": max(latencies), "p50_vs_alone": p50 / alone_p50, "lines_done_meanwhile": lines_done,
            "batch_lines": a.lines, "delay_s": a.delay, "max_concurrency": a.places, "flood_clients": a.flood}


async def measure(v1: str, a: argparse.Namespace) -> list[dict[str, Any]]:
    """The three phases against one hub."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10)) as http:
        await interactive(http, v1, 1)  # the engine started
        alone = await interactive(http, v1, a.requests)
        with_batch, batch_done = await batch_phase(http, v1, a.lines, a.requests)
        with_flood, flood_done = await flood_phase(http, v1, a.lines, a.requests, a.flood)
    p50 = percentile(alone, 50)
    return [row("alone", alone, p50, None, a), row("batch", with_batch, p50, batch_done, a),
            row("flood (no priority)", with_flood, p50, flood_done, a)]


def run_batch_priority(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of one run, against a fresh hub."""
    with tempfile.TemporaryDirectory(prefix="hub-batch-priority-") as d:
        tmp, port = Path(d), free_port()
        with started_hub(tmp, registry(port, tmp / "state", a.delay, a.places), port) as root:
            return asyncio.run(measure(root + "/v1", a))


def report(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the rows."""
    lines = [f"{'phase':<20} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'p50/alone':>9} {'lines done':>10}"]
    for r in rows:
        done = "-" if r["lines_done_meanwhile"] is None else str(r["lines_done_meanwhile"])
        lines.append(f"{r['phase']:<20} {r['p50_s']:7.3f} {r['p95_s']:7.3f} {r['max_s']:7.3f} "
                     f"{r['p50_vs_alone']:9.2f} {done:>10}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batch_priority", description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=500, help="lines of the batch (and of the script's flood)")
    p.add_argument("--requests", type=int, default=20, help="interactive requests per phase")
    p.add_argument("--delay", type=float, default=0.2, help="the engine's answer time (seconds)")
    p.add_argument("--places", type=int, default=4, help="the model's max_concurrency")
    p.add_argument("--flood", type=int, default=16, help="clients of the script that sends the lines as requests")
    p.add_argument("--out", default="artifacts/benchmarks/batch_priority.csv")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line of the batch priority benchmark."""
    a = parser().parse_args(argv)
    rows = run_batch_priority(a)
    print(report(rows))
    print(f"written: {write_csv(rows, a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
