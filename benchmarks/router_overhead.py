"""Router overhead: the same small non-streaming chat request direct to an engine, through the hub, and through
LiteLLM's proxy, in one run; p50/p99 added milliseconds per concurrency level, and the ratio hub/LiteLLM.

    python -m benchmarks.router_overhead --setup-litellm     # once: LiteLLM's proxy in <envs_dir>/litellm
    python -m benchmarks.router_overhead [--requests 600] [--concurrency 1 16] [--no-litellm] [--out FILE.csv]

The engine is the project's test responder (tests/responder.py), started by a `hub serve` of this script as a
`command` engine; the direct and LiteLLM paths go to that same engine process. Targets are measured in interleaved
rounds (direct, hub, litellm, direct, ...) so that drift on a shared machine hits them alike. Added latency is a
percentile through the proxy minus the same percentile direct. LiteLLM lives in its own virtual environment (never
the hub's); it runs with its bundled model cost map (no network) and without a database.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.measure import chat_once
from benchmarks.metrics import added_latency, percentile
from benchmarks.results import write_csv
from benchmarks.scenarios import RouterOverheadScenario
from hub.procs import free_port, stop_process, wait_http

ROOT = Path(__file__).resolve().parent.parent
RESPONDER = ROOT / "tests" / "responder.py"
MODEL = "bench"
TARGETS_P50_MS, TARGETS_P99_MS = 1.0, 5.0  # the hub's targets at concurrency 1


def envs_dir() -> Path:
    """Where engine (and tool) environments live: HUB_ENVS_DIR, else .hub/envs at the repo root."""
    return Path(os.environ.get("HUB_ENVS_DIR") or ROOT / ".hub" / "envs")


def litellm_python() -> Path:
    """The Python of LiteLLM's own environment."""
    return envs_dir() / "litellm" / "bin" / "python"


def setup_litellm() -> Path:
    """Make <envs_dir>/litellm with `litellm[proxy]` (idempotent)."""
    env = envs_dir() / "litellm"
    py = env / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    probe = subprocess.run([str(py), "-c", "import litellm.proxy.proxy_server"], capture_output=True,
                           env={**os.environ, **LITELLM_ENV})
    if probe.returncode != 0:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "litellm[proxy]"], check=True)
    return py


# LiteLLM must not reach the network: bundled cost map, no telemetry. Like the hub here, it runs without an API
# key (loopback only), so that neither side pays for authentication.
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
               "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "True",
               "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}


@contextlib.contextmanager
def started_hub(tmp: Path) -> Iterator[tuple[str, str]]:
    """A `hub serve` with the test responder as a `command` engine; yields (hub /v1 URL, engine /v1 URL)."""
    port = free_port()
    cmd = [sys.executable, str(RESPONDER), "--port", "{port}", "--model", MODEL, "--chunk-delay", "0"]
    cfg = tmp / "models.toml"
    cfg.write_text(
        f'[hub]\nport = {port}\nstate_dir = {json.dumps(str(tmp / "state"))}\n\n'
        f'[models.{MODEL}]\ntype = "text"\nengine = "command"\n'
        f'command = {json.dumps(cmd)}\nhealth = "/health"\n'
    )
    log = tmp / "hub.log"
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--config", str(cfg), "--no-ui"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                            env={**os.environ, "HUB_STATE_DIR": str(tmp / "state")})
    try:
        root = f"http://127.0.0.1:{port}"
        wait_http(root + "/health", proc, 60, log)
        entry = httpx.post(f"{root}/hub/models/{MODEL}/load", timeout=60).json()
        yield root + "/v1", f"http://127.0.0.1:{entry['process']['port']}/v1"
    finally:
        stop_process(proc)


@contextlib.contextmanager
def started_litellm(tmp: Path, engine_v1: str) -> Iterator[str]:
    """LiteLLM's proxy from its own environment, routing model `bench` to the engine; yields its /v1 URL."""
    py = litellm_python()
    if not py.exists():
        raise RuntimeError(f"LiteLLM's environment is missing ({py.parent.parent}): run "
                           "`python -m benchmarks.router_overhead --setup-litellm`, or pass --no-litellm")
    port = free_port()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {engine_v1}\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  turn_off_message_logging: true\n"
    )
    log = tmp / "litellm.log"
    exe = py.parent / "litellm"
    proc = subprocess.Popen([str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True,
                            env={**os.environ, **LITELLM_ENV})
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, 180, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(proc)


async def _measure(targets: dict[str, str], sc: RouterOverheadScenario, c: int) -> dict[str, list[float]]:
    """Latencies (seconds) per target at concurrency c, measured in interleaved rounds."""
    lat: dict[str, list[float]] = {name: [] for name in targets}
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    clients = {name: httpx.AsyncClient(timeout=60, limits=limits) for name in targets}
    try:
        for name, url in targets.items():  # warm-up: connections, caches, lazy imports
            await asyncio.gather(*(chat_once(clients[name], url, MODEL) for _ in range(max(sc.warmup, c))))
        per_round = -(-sc.requests // sc.rounds)
        for _ in range(sc.rounds):
            for name, url in targets.items():
                sem = asyncio.Semaphore(c)

                async def one(client: httpx.AsyncClient = clients[name], url: str = url,
                              sem: asyncio.Semaphore = sem) -> float:
                    async with sem:
                        return await chat_once(client, url, MODEL)

                lat[name].extend(await asyncio.gather(*(one() for _ in range(per_round))))
    finally:
        for cl in clients.values():
            await cl.aclose()
    return lat


def run_router_overhead(sc: RouterOverheadScenario) -> list[dict[str, Any]]:
    """One row per (concurrency, target): p50/p99 latency and added ms against direct; LiteLLM rows carry the
    ratio of the hub's added latency to LiteLLM's."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hub-overhead-") as d:
        tmp = Path(d)
        with started_hub(tmp) as (hub_v1, engine_v1), contextlib.ExitStack() as stack:
            targets = {"direct": engine_v1, "hub": hub_v1}
            if sc.litellm:
                targets["litellm"] = stack.enter_context(started_litellm(tmp, engine_v1))
            for c in sc.concurrency:
                lat = asyncio.run(_measure(targets, sc, c))
                added = {name: added_latency(lat["direct"], lat[name]) for name in targets if name != "direct"}
                for name, xs in lat.items():
                    row: dict[str, Any] = {"scenario": sc.name, "concurrency": c, "target": name,
                                           "requests": len(xs), "p50_ms": percentile(xs, 50) * 1000,
                                           "p99_ms": percentile(xs, 99) * 1000}
                    if name != "direct":
                        row["added_p50_ms"] = added[name]["added_p50_ms"]
                        row["added_p99_ms"] = added[name]["added_p99_ms"]
                    rows.append(row)
                if "litellm" in added:
                    for q in (50, 99):
                        h, ll = added["hub"][f"added_p{q}_ms"], added["litellm"][f"added_p{q}_ms"]
                        rows.append({"scenario": sc.name, "concurrency": c, "target": f"ratio_hub_litellm_p{q}",
                                     "requests": None, "ratio": h / ll if ll > 0 else float("nan")})
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the rows, with the targets' verdict at concurrency 1."""
    lines = [f"{'c':>3} {'target':<10} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8}"]
    ratios = []
    for r in rows:
        if r["target"].startswith("ratio"):
            ratios.append(f"c={r['concurrency']}: added {r['target'][-3:]} hub/litellm = {r['ratio']:.2f}")
            continue
        add50 = f"{r['added_p50_ms']:8.2f}" if "added_p50_ms" in r else f"{'':8}"
        add99 = f"{r['added_p99_ms']:8.2f}" if "added_p99_ms" in r else f"{'':8}"
        lines.append(f"{r['concurrency']:>3} {r['target']:<10} {r['requests']:>5} {r['p50_ms']:8.2f} "
                     f"{r['p99_ms']:8.2f} {add50} {add99}")
    lines.extend(ratios)
    hub1 = next((r for r in rows if r["target"] == "hub" and r["concurrency"] == 1), None)
    if hub1:
        ok = hub1["added_p50_ms"] <= TARGETS_P50_MS and hub1["added_p99_ms"] <= TARGETS_P99_MS
        lines.append(f"hub at c=1: added p50 {hub1['added_p50_ms']:.2f} ms (target <= {TARGETS_P50_MS:g}), "
                     f"p99 {hub1['added_p99_ms']:.2f} ms (target <= {TARGETS_P99_MS:g}): "
                     f"{'met' if ok else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line of the router-overhead benchmark."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.router_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=600, help="requests per target and concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--no-litellm", action="store_true", help="measure direct and hub only")
    p.add_argument("--setup-litellm", action="store_true", help="make LiteLLM's environment and exit")
    p.add_argument("--out", default="artifacts/benchmarks/router_overhead.csv")
    a = p.parse_args(argv)
    if a.setup_litellm:
        print(f"LiteLLM's proxy is ready: {setup_litellm()}")
        return 0
    sc = RouterOverheadScenario(name="router-overhead", requests=a.requests, concurrency=a.concurrency,
                                rounds=a.rounds, warmup=a.warmup, litellm=not a.no_litellm)
    try:
        rows = run_router_overhead(sc)
    except RuntimeError as err:
        print(f"router_overhead: {err}", file=sys.stderr)
        return 1
    print(report(rows))
    print(f"written: {write_csv(rows, a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
