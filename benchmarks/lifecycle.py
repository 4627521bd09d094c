"""Cold start and swap: a request to a stopped model -> its first token (or image); a swap A -> B under a budget."""

from __future__ import annotations

from typing import Any

from benchmarks.measure import HubClient, generate_images, run_sync, stream_chat
from benchmarks.scenarios import ColdStartScenario, SwapScenario


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
