"""Text serving benchmark: streamed chat through the hub at several concurrency levels (vLLM bench serve metrics)."""

from __future__ import annotations

from typing import Any

from benchmarks.measure import HubClient, run_concurrent, run_sync, stream_chat
from benchmarks.metrics import RequestRecord, summarize_text
from benchmarks.scenarios import TextScenario


async def measure_text(hub: HubClient, sc: TextScenario) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one summary row per concurrency level, one row per request)."""
    summary, raw = [], []
    async with hub.async_client(max(sc.concurrency) + 4) as client:
        for _ in range(sc.warmup):
            rec = await stream_chat(client, hub.v1, sc.model, sc.prompt, sc.max_tokens)
            if not rec.ok:
                raise RuntimeError(f"warm-up request to {sc.model!r} failed: {rec.error}")
        for c in sc.concurrency:
            total = max(sc.requests, c)

            async def one(i: int) -> RequestRecord:
                return await stream_chat(client, hub.v1, sc.model, sc.prompt, sc.max_tokens)

            records, _ = await run_concurrent(one, total, c)
            summary.append({"scenario": sc.name, "model": sc.model, "concurrency": c, "max_tokens": sc.max_tokens,
                            **summarize_text(records)})
            for i, r in enumerate(records):
                raw.append({"scenario": sc.name, "model": sc.model, "concurrency": c, "request": i, "ok": r.ok,
                            "error": r.error, "output_tokens": r.output_tokens,
                            "ttft_ms": r.ttft * 1000 if r.ttft is not None else None,
                            "tpot_ms": r.tpot * 1000 if r.tpot is not None else None,
                            "e2el_ms": r.e2el * 1000 if r.e2el is not None else None})
    return summary, raw


def run_text(hub: HubClient, sc: TextScenario) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """measure_text, callable from plain code and from notebooks."""
    return run_sync(measure_text(hub, sc))
