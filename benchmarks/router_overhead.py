"""Router overhead: the same small chat request direct to an engine, through the hub and through its peers (a bare
ASGI pass-through, vllm-router, LiteLLM's proxy), in one run; non-streaming and streaming, at several concurrency
levels; the milliseconds each hop adds and the requests/s each sustains.

    python -m benchmarks.router_overhead --setup-litellm --setup-vllm-router   # once: the peers' environments
    python -m benchmarks.router_overhead [--requests N] [--concurrency 1 16 64] [--no-litellm] [--no-vllm-router]
                                         [--no-bare] [--no-pin] [--out FILE.csv]

The engine is the project's test responder (tests/responder.py, streaming with no delay between chunks), started by
a `hub serve` of this script as a `command` engine; every target goes to that same engine process. A peer whose
environment is missing is skipped with the reason printed. Servers and cores: benchmarks/peers.py; the load
generator: benchmarks/loadgen.py.

How it is counted: targets are measured in interleaved rounds (direct, hub, bare, vllm-router, litellm, direct, ...)
so that drift on a shared machine hits them alike. Each round gives each target its percentiles and its requests/s;
a row holds the median over rounds. Added time is the median over rounds of (target - direct in the same round).
Plain requests are timed to the whole answer; streams to the first chunk and to the end. Each target's own CPU per
request (`cpu_us`: its process, all threads, not its children; for direct, the engine's) is counted over each round:
on a machine with two cores the load generator shares a core with the engine, so at 16 and 64 the direct rate is
held back by that core, and a proxy's added time there is partly hidden (it runs alongside, on the other core);
CPU per request is what a proxy costs whatever the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.metrics import percentile
from benchmarks.peers import (
    MODEL,
    PEERS,
    STARTERS,
    Cores,
    Server,
    affinity,
    litellm_python,
    missing,
    plan_cores,
    setup_litellm,
    setup_vllm_router,
    started_hub,
    vllm_router_exe,
)
from benchmarks.results import write_csv
from benchmarks.scenarios import RouterOverheadScenario
from hub.locks import LockError

__all__ = ["litellm_python", "report", "run_router_overhead", "vllm_router_exe"]

PROMPT = "one two three four five six seven"  # the responder echoes it: a stream of 8 text chunks
# The targets for the hub on a 2-core machine (ms, req/s, ratios of added time).
TARGET_ADDED_P50_MS = {1: 0.5, 16: 2.5, 64: 8.0}
TARGET_ADDED_FIRST_MS = {1: 1.0}
TARGET_REQ_S = {64: 1800.0}
TARGET_X = {"bare": 1.3, "vllm-router": 3.0}


def _med(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def _cpu_s(pid: int) -> float:
    """CPU seconds a process has used so far: all its threads, not its children (the scheduler's nanoseconds per
    thread; /proc/PID/stat counts in 10 ms ticks, too coarse for a short round)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _round_stats(b: loadgen.Burst, cpu_s: float) -> dict[str, float]:
    """One round of one target: percentiles in ms, requests/s, the target's and the generator's CPU per request."""
    out = {"p50_ms": percentile(b.total, 50) * 1000, "p99_ms": percentile(b.total, 99) * 1000,
           "req_s": b.requests_per_s, "gen_cpu_us": b.cpu_s / len(b.total) * 1e6,
           "cpu_us": cpu_s / len(b.total) * 1e6}
    if b.first:
        out["first_p50_ms"] = percentile(b.first, 50) * 1000
        out["first_p99_ms"] = percentile(b.first, 99) * 1000
    return out


async def _measure(targets: list[Server], sc: RouterOverheadScenario) -> dict[tuple[int, str, str], list]:
    """{(concurrency, mode, target): one (Burst, the target's CPU seconds) per round}, in interleaved rounds."""
    out: dict[tuple[int, str, str], list] = defaultdict(list)
    for c in sc.concurrency:
        per_round = max(-(-sc.requests // sc.rounds), 3 * c)  # enough for a steady state at c
        sessions = {t.name: loadgen.session(c) for t in targets}
        try:
            for mode in sc.modes:
                body = loadgen.chat_body(MODEL, PROMPT, mode == "stream")
                for t in targets:  # warm-up: connections, caches, lazy imports
                    await loadgen.burst(sessions[t.name], t.v1 + "/chat/completions", body, mode,
                                        max(sc.warmup, c), c)
                for _ in range(sc.rounds):
                    for t in targets:
                        cpu0 = _cpu_s(t.pid)
                        b = await loadgen.burst(sessions[t.name], t.v1 + "/chat/completions", body, mode,
                                                per_round, c)
                        out[(c, mode, t.name)].append((b, _cpu_s(t.pid) - cpu0))
        finally:
            for s in sessions.values():
                await s.close()
    return out


def _rows(sc: RouterOverheadScenario, bursts: dict[tuple[int, str, str], list], targets: list[Server],
          cores: dict[str, str], gen_cores: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c in sc.concurrency:
        for mode in sc.modes:
            stats = {t.name: [_round_stats(b, cpu) for b, cpu in bursts[(c, mode, t.name)]] for t in targets}
            direct = stats["direct"]
            level: dict[str, dict[str, Any]] = {}
            for t in targets:
                rs = stats[t.name]
                row: dict[str, Any] = {"scenario": sc.name, "mode": mode, "concurrency": c, "target": t.name,
                                       "requests": sum(len(b.total) for b, _ in bursts[(c, mode, t.name)]),
                                       "rounds": len(rs)}
                keys = ["p50_ms", "p99_ms"] + (["first_p50_ms", "first_p99_ms"] if mode == "stream" else [])
                for k in keys:
                    row[k] = _med([r[k] for r in rs])
                    if t.name != "direct":
                        row[f"added_{k}"] = _med([r[k] - d[k] for r, d in zip(rs, direct, strict=True)])
                row["req_s"] = _med([r["req_s"] for r in rs])
                row["gen_cpu_us"] = _med([r["gen_cpu_us"] for r in rs])
                row["cpu_us"] = _med([r["cpu_us"] for r in rs])
                row["cores"], row["gen_cores"] = cores[t.name], gen_cores
                level[t.name] = row
                rows.append(row)
            if "hub" in level:
                main = "added_first_p50_ms" if mode == "stream" else "added_p50_ms"
                for peer in PEERS:
                    if peer in level:
                        theirs = level[peer][main]
                        level["hub"][f"x_{peer.replace('-', '_')}"] = (
                            level["hub"][main] / theirs if theirs > 0 else math.nan)
                        level["hub"][f"cpu_x_{peer.replace('-', '_')}"] = (
                            level["hub"]["cpu_us"] / level[peer]["cpu_us"] if level[peer]["cpu_us"] > 0 else math.nan)
    return rows


def run_router_overhead(sc: RouterOverheadScenario, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per (concurrency, mode, target): latency percentiles, added ms over direct, requests/s; the hub's
    rows carry the ratio of its added time to each peer's (x_bare, x_vllm_router, x_litellm)."""
    plan: Cores = plan_cores(sc.pin)
    with tempfile.TemporaryDirectory(prefix="hub-overhead-") as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        hub, direct = stack.enter_context(started_hub(tmp, plan))
        targets = [direct, hub]
        for peer in sc.peers:
            if why := missing(peer):
                log(f"router_overhead: skipping {peer}: {why}")
                continue
            targets.append(stack.enter_context(STARTERS[peer](tmp, direct.v1, plan)))
        cores = {t.name: affinity(t.pid) for t in targets}
        gen = ",".join(map(str, sorted(plan.load))) if plan.load else affinity(0)
        log("router_overhead: cores: " + ", ".join(f"{n} {c}" for n, c in cores.items())
            + f", load generator {gen}" + ("" if plan.proxy else " (not pinned)"))
        bursts = loadgen.run_in_thread(lambda: _measure(targets, sc), plan.load)
        return _rows(sc, bursts, targets, cores, gen)


def _f(x: Any, width: int = 7, digits: int = 2) -> str:
    return f"{'':>{width}}" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:>{width}.{digits}f}"


def report(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the rows, the hub's ratios to its peers and the issue's targets as pass/fail lines."""
    lines = [f"{'mode':<6} {'c':>3} {'target':<12} {'n':>5} {'p50':>7} {'p99':>7} {'+p50':>7} {'+p99':>7} "
             f"{'first':>7} {'+first':>7} {'req/s':>7} {'cpu us':>7} {'x bare':>7} {'x vr':>7} {'x llm':>7}  cores"]
    for r in rows:
        lines.append(f"{r['mode']:<6} {r['concurrency']:>3} {r['target']:<12} {r['requests']:>5} {_f(r['p50_ms'])} "
                     f"{_f(r['p99_ms'])} {_f(r.get('added_p50_ms'))} {_f(r.get('added_p99_ms'))} "
                     f"{_f(r.get('first_p50_ms'))} {_f(r.get('added_first_p50_ms'))} {_f(r['req_s'], 7, 0)} "
                     f"{_f(r.get('cpu_us'), 7, 0)} "
                     f"{_f(r.get('x_bare'))} {_f(r.get('x_vllm_router'))} {_f(r.get('x_litellm'))}  {r['cores']}")
    lines.append("ms; +: added over direct (median over rounds); first: first stream chunk; cpu us: the target's own "
                 "CPU per request; x: the hub's added p50 (streams: added first chunk) over the peer's")
    hub = {(r["mode"], r["concurrency"]): r for r in rows if r["target"] == "hub"}
    direct = {(r["mode"], r["concurrency"]): r for r in rows if r["target"] == "direct"}
    if (d := direct.get(("plain", max(c for _, c in direct)))) is not None:
        lines.append(f"load generator: {d['req_s']:.0f} req/s direct at c={d['concurrency']} on core(s) "
                     f"{d['gen_cores']}, shared with the engine, at {d['gen_cpu_us']:.0f} us of its own CPU per "
                     f"request (alone: about {1e6 / d['gen_cpu_us']:.0f} req/s); a proxy near the direct rate is "
                     "held back by the load side, not by itself")

    def verdict(name: str, value: float, ok: bool, ratio: bool = False) -> None:
        if math.isnan(value):
            lines.append(f"n/a   {name}: the peer's added time is <= 0 (noise, or direct held back by the load side)")
        elif ratio and value <= 0:
            lines.append(f"PASS  {name}: {value:.2f} (the hub's added time is <= 0: within noise of direct)")
        else:
            lines.append(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.2f}")

    for c, limit in TARGET_ADDED_P50_MS.items():
        if (r := hub.get(("plain", c))) is not None:
            verdict(f"hub added p50 at c={c} <= {limit:g} ms", r["added_p50_ms"], r["added_p50_ms"] <= limit)
    for c, limit in TARGET_ADDED_FIRST_MS.items():
        if (r := hub.get(("stream", c))) is not None:
            verdict(f"hub added first chunk p50 at c={c} <= {limit:g} ms", r["added_first_p50_ms"],
                    r["added_first_p50_ms"] <= limit)
    for c, limit in TARGET_REQ_S.items():
        if (r := hub.get(("plain", c))) is not None:
            verdict(f"hub req/s at c={c} >= {limit:g}", r["req_s"], r["req_s"] >= limit)
    for peer, limit in TARGET_X.items():
        for (mode, c), r in hub.items():
            x = r.get(f"x_{peer.replace('-', '_')}")
            if mode == "plain" and x is not None:
                verdict(f"hub added p50 within {limit:g}x of {peer} at c={c}", x, x <= limit, ratio=True)
    for (mode, c), r in hub.items():
        if (x := r.get("cpu_x_bare")) is not None and not math.isnan(x):
            lines.append(f"info  hub CPU per request over bare's, {mode} at c={c}: {x:.2f} "
                         f"({r['cpu_us']:.0f} us)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line of the router-overhead benchmark."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.router_overhead", description=__doc__.splitlines()[0])
    defaults = RouterOverheadScenario(name="router-overhead")
    p.add_argument("--requests", type=int, default=defaults.requests,
                   help="requests per target, concurrency level and mode, split across rounds")
    p.add_argument("--concurrency", type=int, nargs="+", default=defaults.concurrency)
    p.add_argument("--modes", nargs="+", choices=["plain", "stream"], default=defaults.modes)
    p.add_argument("--rounds", type=int, default=defaults.rounds)
    p.add_argument("--warmup", type=int, default=defaults.warmup)
    for peer in PEERS:
        p.add_argument(f"--no-{peer}", action="store_true", help=f"leave {peer} out")
    p.add_argument("--no-pin", action="store_true", help="leave every process on every core")
    p.add_argument("--setup-litellm", action="store_true", help="make LiteLLM's environment and exit")
    p.add_argument("--setup-vllm-router", action="store_true", help="make vllm-router's environment and exit")
    p.add_argument("--out", default="artifacts/benchmarks/router_overhead.csv")
    a = p.parse_args(argv)
    if a.setup_litellm or a.setup_vllm_router:
        try:
            if a.setup_litellm:
                print(f"LiteLLM's proxy is ready: {setup_litellm()}")
            if a.setup_vllm_router:
                print(f"vllm-router is ready: {setup_vllm_router()}")
        except LockError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    peers = [peer for peer in PEERS if not getattr(a, f"no_{peer.replace('-', '_')}")]
    sc = RouterOverheadScenario(name="router-overhead", requests=a.requests, concurrency=a.concurrency,
                                modes=a.modes, rounds=a.rounds, warmup=a.warmup, peers=peers, pin=not a.no_pin)
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
