"""Cold start of a vllm model, as CSV on stdout: the engine's own start time (launch -> GET /health 200, the engine
started alone from the same command line the hub would use) and cold start to first token through the hub (a
streamed chat request sent to a stopped model -> its first content token).

    python benchmarks/cold_start.py --config models.demo.toml --model smollm2 --runs 3

Runs where `hub engines setup vllm` and `hub demo prepare` were run (it uses the registry's envs and state dirs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from hub.engines import get_engine
from hub.engines.base import LaunchContext
from hub.registry import load_registry
from hub.runtimes.process import ProcessRuntime

PROMPT = "What is the capital of France?"


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Block until GET url answers 200; fails if the process exits first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def engine_start(config: Path, model: str, timeout: float, log: Path) -> float:
    """Seconds from launching the engine alone to its GET /health answering 200."""
    reg = load_registry(config)
    port = free_port()
    ctx = LaunchContext(model, reg.models[model], reg, port)
    spec = get_engine(reg.models[model].engine).launch(ctx)
    argv, env = ProcessRuntime(log.parent, reg.envs_dir).command_line(spec)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}{spec.health_path}", proc, timeout)
        return time.monotonic() - t0
    finally:
        stop(proc)


def first_token(url: str, model: str, timeout: float) -> float:
    """Seconds from sending a streamed chat request to the first content token."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "temperature": 0, "max_tokens": 16}
    t0 = time.monotonic()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=timeout) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {})
            if delta.get("content"):
                return time.monotonic() - t0
    raise RuntimeError("the stream ended without a content token")


def main(argv: list[str] | None = None) -> int:
    """Measure and print CSV rows: metric, run, seconds; then one median row per metric."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("models.demo.toml"))
    p.add_argument("--model", default="smollm2")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args(argv)
    config = args.config.resolve()
    out = csv.writer(sys.stdout)
    out.writerow(["metric", "run", "seconds"])
    results: dict[str, list[float]] = {"engine_start_to_health": [], "hub_cold_start_to_first_token": []}
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        for i in range(args.runs):
            s = engine_start(config, args.model, args.timeout, Path(tmp) / f"engine-{i}.log")
            results["engine_start_to_health"].append(s)
            out.writerow(["engine_start_to_health", i + 1, f"{s:.2f}"])
            sys.stdout.flush()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        hub = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--config", str(config), "--port",
                                str(port), "--no-ui"], stdout=(Path(tmp) / "hub.log").open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(url + "/health", hub, 60)
            for i in range(args.runs):
                s = first_token(url, args.model, args.timeout)
                results["hub_cold_start_to_first_token"].append(s)
                out.writerow(["hub_cold_start_to_first_token", i + 1, f"{s:.2f}"])
                sys.stdout.flush()
                httpx.post(f"{url}/hub/models/{args.model}/unload", timeout=60).raise_for_status()
        finally:
            stop(hub)
    for metric, values in results.items():
        out.writerow([metric, "median", f"{statistics.median(values):.2f}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
