"""Image serving: images per second at one concurrency with batching off and on (in one run), and what streamed
partial images cost.

    python -m benchmarks.image_batching [--source DIR] [--size 64x64] [--steps 4] [--concurrency 8] [--requests 32]
                                        [--max-batch 8] [--rounds 2] [--preview-sizes 64x64 128x128] [--out DIR]

Starts its own `hub serve` with two registrations of one Diffusers pipeline (default: the demo's tiny-sd, on CPU):
`batch-off` (max_batch 1) and `batch-on` (max_batch N). Rounds measure the two back to back, alternating which goes
first, so drift on a shared machine hits both alike (the median of the rounds' ratios is reported beside the overall
ratio); every request has its own prompt and seed. Each engine's GET /stats says how many pipeline calls the
requests took. Then, on `batch-off`, the preview scenario: the same request streamed with partial images and
progress comments against unstreamed, in back-to-back pairs, and the time the engine spent in its step callback
(progress and previews) against its denoising time. The preview scenario also runs against any hub (benchmarks.run).
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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.measure import HubClient, generate_images, run_concurrent, run_sync
from benchmarks.metrics import percentile
from benchmarks.peers import envs_dir
from benchmarks.results import write_csv
from benchmarks.scenarios import ImageBatchingScenario, ImagePreviewScenario
from hub.procs import free_port, stop_process, wait_http

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("batch-off", "batch-on")


def demo_source() -> Path:
    """The demo's tiny-sd: HUB_DEMO_MODELS/tiny-sd, else .hub/models/tiny-sd at the repo root."""
    return Path(os.environ.get("HUB_DEMO_MODELS") or ROOT / ".hub" / "models") / "tiny-sd"


def registry(sc: ImageBatchingScenario, port: int, state: Path) -> str:
    """A registry with the pipeline registered twice, batching off and on."""
    source = sc.source or str(demo_source())
    threads = f"cpu_threads = {sc.cpu_threads}\n" if sc.cpu_threads else ""
    text = f'[hub]\nport = {port}\nstate_dir = {json.dumps(str(state))}\nstart_timeout = "10m"\n'
    for name, batch in zip(VARIANTS, (1, sc.max_batch), strict=True):
        text += (f'\n[models.{name}]\ntype = "image"\nengine = "diffusers"\nsource = {json.dumps(source)}\n'
                 f'runtime = "process"\n[models.{name}.args]\ndevice = "{sc.device}"\n{threads}'
                 f'default_size = "{sc.size}"\ndefault_steps = {sc.steps}\nmax_n = 1\nmax_batch = {batch}\n'
                 f"request_timeout = 3600\n")
    return text


def started_hub(sc: ImageBatchingScenario, tmp: Path) -> contextlib.AbstractContextManager[HubClient]:
    """A `hub serve` of this benchmark with both variants loaded."""
    return serve_registry(lambda port, state: registry(sc, port, state), tmp, VARIANTS)


@contextlib.contextmanager
def serve_registry(make: Callable[[int, Path], str], tmp: Path, models: Iterable[str]) -> Iterator[HubClient]:
    """A `hub serve` of the registry make(port, state_dir) in `tmp`, with `models` loaded; stopped on exit."""
    port = free_port()
    cfg = tmp / "models.toml"
    cfg.write_text(make(port, tmp / "state"))
    log = tmp / "hub.log"
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--config", str(cfg), "--no-ui"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                            env={**os.environ, "HUB_STATE_DIR": str(tmp / "state"), "HUB_ENVS_DIR": str(envs_dir())})
    try:
        root = f"http://127.0.0.1:{port}"
        wait_http(root + "/health", proc, 60, log)
        hub = HubClient(root + "/v1", api_key="", timeout=3600)
        for name in models:
            hub.load(name)
        yield hub
    finally:
        stop_process(proc)


def engine_stats(hub: HubClient, model: str) -> dict[str, Any] | None:
    """GET /stats of a model's engine (a process engine's own port); None where there is none."""
    port = (hub.model(model).get("process") or {}).get("port")
    if not port:
        return None
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=30)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


async def _batching(hub: HubClient, sc: ImageBatchingScenario) -> list[dict[str, Any]]:
    totals = {v: {"images": 0, "seconds": 0.0, "failed": 0, "latency": [], "calls": 0, "requests": 0, "rates": []}
              for v in VARIANTS}
    async with hub.async_client(sc.concurrency + 2) as client:

        async def one(model: str, i: int) -> dict[str, Any]:
            return await generate_images(client, hub.v1, model, f"{sc.prompt} #{i}", sc.size, 1, sc.steps)

        for model in VARIANTS:
            for i in range(sc.warmup):
                w = await one(model, -1 - i)
                if not w["ok"]:
                    raise RuntimeError(f"warm-up request to {model!r} failed: {w['error']}")
        for r in range(sc.rounds):
            for model in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:  # who goes first alternates
                before = await asyncio.to_thread(engine_stats, hub, model)
                results, wall = await run_concurrent(lambda i, m=model, r=r: one(m, r * sc.requests + i),
                                                     sc.requests, sc.concurrency)
                after = await asyncio.to_thread(engine_stats, hub, model)
                t = totals[model]
                images = sum(x["images"] for x in results)
                t["images"] += images
                t["failed"] += sum(1 for x in results if not x["ok"])
                t["seconds"] += wall
                t["rates"].append(images / wall)
                t["latency"] += [x["seconds"] for x in results if x["ok"]]
                if before and after:
                    t["calls"] += after["pipeline_calls"] - before["pipeline_calls"]
                    t["requests"] += after["requests"] - before["requests"]
    rows = []
    for model, t in totals.items():
        rows.append({"scenario": sc.name, "variant": model, "max_batch": 1 if model == "batch-off" else sc.max_batch,
                     "size": sc.size, "steps": sc.steps, "concurrency": sc.concurrency,
                     "requests": sc.requests * sc.rounds, "rounds": sc.rounds, "failed": t["failed"],
                     "images": t["images"], "wall_s": t["seconds"],
                     "images_per_s": t["images"] / t["seconds"] if t["seconds"] else None,
                     "latency_p50_s": percentile(t["latency"], 50), "latency_p99_s": percentile(t["latency"], 99),
                     "pipeline_calls": t["calls"],
                     "images_per_call": t["requests"] / t["calls"] if t["calls"] else None})
    off, on = rows
    if off["images_per_s"] and on["images_per_s"]:
        on["speedup"] = on["images_per_s"] / off["images_per_s"]
        # rounds pair the variants back to back: the median of their ratios resists a machine's drift
        on["speedup_median_of_rounds"] = percentile([b / a for a, b in zip(totals["batch-off"]["rates"],
                                                                              totals["batch-on"]["rates"],
                                                                              strict=True)], 50)
    return rows


def run_image_batching(sc: ImageBatchingScenario, previews: ImagePreviewScenario | None = None
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(batching rows: one per variant; preview rows, on batch-off, when `previews` is given)."""
    with tempfile.TemporaryDirectory(prefix="hub-image-batching-") as d, started_hub(sc, Path(d)) as hub:
        rows = run_sync(_batching(hub, sc))
        preview_rows = run_previews(hub, previews.model_copy(update={"model": VARIANTS[0]})) if previews else []
    return rows, preview_rows


# ---- previews ----

async def stream_images(client: httpx.AsyncClient, v1: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed generation: seconds to its last event, and how many partial images and progress lines came."""
    t0 = time.perf_counter()
    counts = {"partial": 0, "completed": 0, "progress": 0, "error": None}
    async with client.stream("POST", v1 + "/images/generations", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            await r.aread()
            return {"seconds": time.perf_counter() - t0, "ok": False, **counts,
                    "error": f"HTTP {r.status_code}: {r.text[:300]}"}
        async for line in r.aiter_lines():
            if line.startswith(": progress"):
                counts["progress"] += 1
            elif line.startswith("event: "):
                kind = line[7:].rpartition(".")[2]
                if kind == "partial_image":
                    counts["partial"] += 1
                elif kind == "completed":
                    counts["completed"] += 1
                elif kind == "error":
                    counts["error"] = "error event"
    return {"seconds": time.perf_counter() - t0, "ok": counts["completed"] > 0 and not counts["error"], **counts}


async def _previews(hub: HubClient, sc: ImagePreviewScenario) -> list[dict[str, Any]]:
    rows = []
    async with hub.async_client(2) as client:
        for size in sc.sizes:
            base = {"model": sc.model, "prompt": sc.prompt, "size": size, "n": 1, "num_inference_steps": sc.steps}
            for _ in range(sc.warmup):
                await generate_images(client, hub.v1, sc.model, sc.prompt, size, 1, sc.steps)
                await stream_images(client, hub.v1, {**base, "partial_images": sc.partial_images})
            plain, streamed, ratios, last = [], [], [], {}
            engine = {"pipeline_s": 0.0, "step_callback_s": 0.0}
            for i in range(sc.repetitions):  # pairs back to back, alternating which goes first
                pair: dict[str, float] = {}
                for variant in ("plain", "stream") if i % 2 == 0 else ("stream", "plain"):
                    if variant == "plain":
                        r = await generate_images(client, hub.v1, sc.model, sc.prompt, size, 1, sc.steps)
                        if r["ok"]:
                            pair["plain"] = r["seconds"]
                        continue
                    before = await asyncio.to_thread(engine_stats, hub, sc.model)
                    last = await stream_images(client, hub.v1, {**base, "partial_images": sc.partial_images})
                    after = await asyncio.to_thread(engine_stats, hub, sc.model)
                    if last["ok"]:
                        pair["stream"] = last["seconds"]
                    if before and after and "step_callback_s" in after:
                        for k in engine:
                            engine[k] += after[k] - before[k]
                if len(pair) == 2:
                    plain.append(pair["plain"])
                    streamed.append(pair["stream"])
                    ratios.append(pair["stream"] / pair["plain"])
            denoise = engine["pipeline_s"] - engine["step_callback_s"]
            rows.append({"scenario": sc.name, "model": sc.model, "size": size, "steps": sc.steps,
                         "partial_images": sc.partial_images, "repetitions": sc.repetitions,
                         "plain_s_p50": percentile(plain, 50), "stream_s_p50": percentile(streamed, 50),
                         "preview_cost_pct": (percentile(ratios, 50) - 1) * 100 if ratios else None,
                         "engine_callback_s": engine["step_callback_s"] if denoise > 0 else None,
                         "engine_callback_pct": engine["step_callback_s"] / denoise * 100 if denoise > 0 else None,
                         "partials_seen": last.get("partial"), "progress_lines": last.get("progress"),
                         "failed": sc.repetitions - len(ratios)})
    return rows


def run_previews(hub: HubClient, sc: ImagePreviewScenario) -> list[dict[str, Any]]:
    """One row per size: seconds per image streamed with previews and unstreamed; the cost in percent (the median
    of back-to-back pairs) and, where the engine reports it, the share of its step callback in its pipeline time."""
    return run_sync(_previews(hub, sc))


def report(rows: list[dict[str, Any]], preview_rows: list[dict[str, Any]]) -> str:
    """A plain-text summary."""
    lines = [f"{'variant':<10} {'max_batch':>9} {'images/s':>9} {'p50 s':>7} {'calls':>6} {'img/call':>8}"]
    for r in rows:
        per_call = f"{r['images_per_call']:8.2f}" if r["images_per_call"] else f"{'-':>8}"
        lines.append(f"{r['variant']:<10} {r['max_batch']:>9} {r['images_per_s']:9.2f} {r['latency_p50_s']:7.2f} "
                     f"{r['pipeline_calls']:>6} {per_call}")
    if "speedup" in rows[-1]:
        lines.append(f"batching on / off: {rows[-1]['speedup']:.2f}x images per second overall, "
                     f"{rows[-1]['speedup_median_of_rounds']:.2f}x median of {rows[-1]['rounds']} rounds")
    for r in preview_rows:
        engine = (f"; the engine's step callback: {r['engine_callback_pct']:.2f}% of denoising"
                  if r["engine_callback_pct"] is not None else "")
        lines.append(f"previews {r['size']} {r['steps']} steps, {r['partial_images']} partials: plain "
                     f"{r['plain_s_p50']:.3f}s, streamed {r['stream_s_p50']:.3f}s (p50), cost "
                     f"{r['preview_cost_pct']:+.1f}% (median of pairs){engine}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line of the image batching and previews benchmark."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.image_batching", description=__doc__.splitlines()[0])
    p.add_argument("--source", default=None, help="a Diffusers pipeline (default: the demo's tiny-sd)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="64x64")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=16, help="requests per variant and round")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--preview-sizes", nargs="*", default=["64x64", "128x128"], help="none: skip the previews")
    p.add_argument("--preview-steps", type=int, default=8)
    p.add_argument("--preview-repetitions", type=int, default=10)
    p.add_argument("--out", default="artifacts/benchmarks")
    a = p.parse_args(argv)
    sc = ImageBatchingScenario(name="image-batching", source=a.source, device=a.device, size=a.size, steps=a.steps,
                               concurrency=a.concurrency, requests=a.requests, max_batch=a.max_batch,
                               rounds=a.rounds, cpu_threads=None if a.device != "cpu" else 1)
    previews = (ImagePreviewScenario(name="image-previews", model=VARIANTS[0], sizes=a.preview_sizes,
                                     steps=a.preview_steps, repetitions=a.preview_repetitions)
                if a.preview_sizes else None)
    try:
        rows, preview_rows = run_image_batching(sc, previews)
    except (RuntimeError, httpx.HTTPError) as err:
        print(f"image_batching: {err}", file=sys.stderr)
        return 1
    print(report(rows, preview_rows))
    print(f"written: {write_csv(rows, Path(a.out) / 'image-batching.csv')}")
    if preview_rows:
        print(f"written: {write_csv(preview_rows, Path(a.out) / 'image-previews.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
