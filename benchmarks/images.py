"""Image benchmark: seconds per image by size and steps, and images per second with n > 1."""

from __future__ import annotations

from typing import Any

from benchmarks.measure import HubClient, generate_images, run_sync
from benchmarks.metrics import mean, percentile
from benchmarks.scenarios import ImageScenario


async def measure_images(hub: HubClient, sc: ImageScenario) -> list[dict[str, Any]]:
    """One row per (size, steps, n): seconds per request and per image, images per second."""
    rows = []
    async with hub.async_client(4) as client:
        for _ in range(sc.warmup):
            w = await generate_images(client, hub.v1, sc.model, sc.prompt, sc.sizes[0], 1, sc.steps[0],
                                      sc.steps_field)
            if not w["ok"]:
                raise RuntimeError(f"warm-up request to {sc.model!r} failed: {w['error']}")
        for size in sc.sizes:
            for steps in sc.steps:
                for n in sc.n:
                    runs = [await generate_images(client, hub.v1, sc.model, sc.prompt, size, n, steps, sc.steps_field)
                            for _ in range(sc.repetitions)]
                    ok = [r for r in runs if r["ok"]]
                    secs = [r["seconds"] for r in ok]
                    images = sum(r["images"] for r in ok)
                    peaks = [r["peak_memory_mb"] for r in ok if r.get("peak_memory_mb") is not None]
                    rows.append({
                        "scenario": sc.name, "model": sc.model, "size": size, "steps": steps, "n": n,
                        "repetitions": len(runs), "failed": len(runs) - len(ok),
                        "s_per_request_mean": mean(secs), "s_per_request_p50": percentile(secs, 50),
                        "s_per_image": sum(secs) / images if images else float("nan"),
                        "images_per_s": images / sum(secs) if secs and sum(secs) > 0 else float("nan"),
                        "peak_memory_mb": max(peaks) if peaks else None,
                        "error": next((r["error"] for r in runs if not r["ok"]), None),
                    })
    return rows


def run_images(hub: HubClient, sc: ImageScenario) -> list[dict[str, Any]]:
    """measure_images, callable from plain code and from notebooks."""
    return run_sync(measure_images(hub, sc))
