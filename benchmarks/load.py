"""Load: many concurrent streams through the hub to a fast engine, and the same streams straight to that engine, in
one run: errors (0 expected), the hub's RSS before, at its peak and after, and the latency the hub adds at that
concurrency.

    python -m benchmarks.load [--streams 200] [--rounds 3] [--no-pin] [--out FILE.csv]

The hub and its engine are the router-overhead benchmark's (benchmarks/peers.py: the test responder as a `command`
engine, streaming 8 chunks without delay; the hub on one core, the engine and the load generator on the others
where there are two cores or more); the client is its load generator (benchmarks/loadgen.py: aiohttp, a stream
timed to its first chunk and to its end, an error unless it ends with [DONE]). A round starts `streams` streams at
once at one target; targets alternate (direct, hub, direct, ...) so that drift on a shared machine hits both alike,
after one warm-up round each. Unlike loadgen.burst, a failed stream is counted, not raised. Added latency is a
percentile through the hub minus the same percentile direct, for the first chunk (TTFT) and the end (E2EL).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from benchmarks import loadgen
from benchmarks.metrics import added_latency, describe
from benchmarks.peers import MODEL, Server, plan_cores, started_hub
from benchmarks.results import write_csv
from benchmarks.scenarios import LoadScenario

PROMPT = "one two three four five six seven"  # the responder echoes it: a stream of 8 text chunks
MB = 1024 * 1024


class RssSampler:
    """The RSS of one process, sampled every `interval` seconds in a thread: its peak while running."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc, self.interval = psutil.Process(pid), interval
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return self.proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


class Streams:
    """What one target's streams saw: (TTFT, E2EL) seconds of each that ended well, and the errors of the rest."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []
        self.errors: list[str] = []


async def _round(session: aiohttp.ClientSession, url: str, body: bytes, n: int, into: Streams) -> None:
    """n streams started at once."""
    async def one() -> None:
        try:
            first, total, _ = await loadgen.stream(session, url, body)
            into.times.append((first, total))
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as err:
            into.errors.append(f"{type(err).__name__}: {err}"[:300])

    await asyncio.gather(*(one() for _ in range(n)))


async def _measure(targets: list[Server], sc: LoadScenario) -> dict[str, Streams]:
    body = loadgen.chat_body(MODEL, PROMPT, stream=True)
    seen = {t.name: Streams() for t in targets}
    sessions = {t.name: loadgen.session(sc.streams) for t in targets}
    try:
        for t in targets:  # warm-up: every connection opened once, not counted
            await _round(sessions[t.name], t.v1 + "/chat/completions", body, sc.streams, Streams())
        for _ in range(sc.rounds):
            for t in targets:
                await _round(sessions[t.name], t.v1 + "/chat/completions", body, sc.streams, seen[t.name])
    finally:
        for s in sessions.values():
            await s.close()
    return seen


def run_load(sc: LoadScenario) -> list[dict[str, Any]]:
    """One row per target (direct, hub): streams, errors, TTFT and E2EL percentiles; the hub's row adds what it
    adds over direct and its RSS before, at its peak, and after."""
    plan = plan_cores(sc.pin)
    with tempfile.TemporaryDirectory(prefix="hub-load-") as d, started_hub(Path(d), plan) as (hub, direct), \
            RssSampler(hub.pid) as rss:
        before = rss.now()
        seen = loadgen.run_in_thread(lambda: _measure([direct, hub], sc), set(plan.load or ()) or None)
        after = rss.now()
    rows: list[dict[str, Any]] = []
    for name, s in seen.items():
        row: dict[str, Any] = {"scenario": sc.name, "target": name, "streams": sc.streams, "rounds": sc.rounds,
                               "requests": len(s.times) + len(s.errors), "errors": len(s.errors),
                               "first_error": s.errors[0] if s.errors else None}
        row.update(describe([t[0] for t in s.times], "ttft_ms", 1000))
        row.update(describe([t[1] for t in s.times], "e2el_ms", 1000))
        rows.append(row)
    h = rows[1]
    for i, what in enumerate(("ttft", "e2el")):
        added = added_latency([t[i] for t in seen["direct"].times], [t[i] for t in seen["hub"].times])
        h[f"added_{what}_p50_ms"], h[f"added_{what}_p99_ms"] = added["added_p50_ms"], added["added_p99_ms"]
    h.update({"hub_rss_before_mb": before / MB, "hub_rss_peak_mb": rss.peak / MB, "hub_rss_after_mb": after / MB})
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    """A plain-text summary of the rows."""
    lines = [f"{'target':<7} {'n':>6} {'errors':>6} {'ttft p50':>9} {'ttft p99':>9} {'e2el p50':>9} {'e2el p99':>9}"]
    for r in rows:
        lines.append(f"{r['target']:<7} {r['requests']:>6} {r['errors']:>6} {r['ttft_ms_p50']:9.1f} "
                     f"{r['ttft_ms_p99']:9.1f} {r['e2el_ms_p50']:9.1f} {r['e2el_ms_p99']:9.1f}")
    h = rows[1]
    lines.append(f"hub adds at {h['streams']} streams: TTFT p50 {h['added_ttft_p50_ms']:+.1f} ms, p99 "
                 f"{h['added_ttft_p99_ms']:+.1f} ms; E2EL p50 {h['added_e2el_p50_ms']:+.1f} ms, p99 "
                 f"{h['added_e2el_p99_ms']:+.1f} ms")
    lines.append(f"hub RSS: {h['hub_rss_before_mb']:.1f} MB before, {h['hub_rss_peak_mb']:.1f} MB at peak, "
                 f"{h['hub_rss_after_mb']:.1f} MB after")
    errors = sum(r["errors"] for r in rows)
    first = next((r["first_error"] for r in rows if r["errors"]), None)
    lines.append(f"errors: {errors}" + (f" (first: {first})" if first else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line of the load benchmark; exits 1 when any stream failed."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=200, help="concurrent streams per round")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per target")
    p.add_argument("--no-pin", action="store_true", help="leave every process on every core")
    p.add_argument("--out", default="artifacts/benchmarks/load.csv")
    a = p.parse_args(argv)
    rows = run_load(LoadScenario(name="load", streams=a.streams, rounds=a.rounds, pin=not a.no_pin))
    print(report(rows))
    print(f"written: {write_csv(rows, a.out)}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
