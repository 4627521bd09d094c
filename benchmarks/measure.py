"""Shared measuring code: timed requests to an OpenAI-compatible endpoint (the hub, an engine, another proxy).

Timing uses time.perf_counter on the client. Requests go out with httpx (no SDK parsing in the timed path); one
pooled AsyncClient per run, so connection set-up is paid once, as a real client would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import httpx

from benchmarks.metrics import RequestRecord
from hub.config import client_api_key, client_url

T = TypeVar("T")


def hub_url() -> str:
    """The hub's /v1 URL: $HUB_URL, else the default address."""
    return client_url() + "/v1"


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, also from inside a running loop (a Jupyter kernel): in a worker thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class HubClient:
    """An OpenAI-compatible base URL (ending in /v1) and, for a hub, its /hub admin API."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 900.0) -> None:
        self.v1 = (base_url or hub_url()).rstrip("/")
        self.root = self.v1.removesuffix("/v1")
        key = api_key if api_key is not None else client_api_key()
        self.headers = {"authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout

    def async_client(self, connections: int = 64) -> httpx.AsyncClient:
        """A pooled client with this endpoint's headers."""
        return httpx.AsyncClient(headers=self.headers, timeout=httpx.Timeout(self.timeout, connect=10.0),
                                 limits=httpx.Limits(max_connections=connections,
                                                     max_keepalive_connections=connections))

    # ---- admin (hub only) ----

    def _admin(self, method: str, path: str, timeout: float | None = None) -> Any:
        r = httpx.request(method, self.root + path, headers=self.headers, timeout=timeout or self.timeout)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json()

    def models(self) -> dict[str, dict[str, Any]]:
        """GET /hub/models as {id: entry}."""
        return {m["id"]: m for m in self._admin("GET", "/hub/models")["data"]}

    def model(self, model_id: str) -> dict[str, Any]:
        """One model's GET /hub/models entry."""
        try:
            return self.models()[model_id]
        except KeyError:
            raise RuntimeError(f"model {model_id!r} is not registered in the hub at {self.root}") from None

    def load(self, model_id: str) -> dict[str, Any]:
        """Start a model and wait until it is ready."""
        return self._admin("POST", f"/hub/models/{model_id}/load")

    def unload(self, model_id: str) -> dict[str, Any]:
        """Stop a model."""
        return self._admin("POST", f"/hub/models/{model_id}/unload")

    def record_memory(self, model_id: str, peak_gb: float, device: str, source: str | None = None) -> dict[str, Any]:
        """Store a measured peak in the hub's memory ledger."""
        r = httpx.post(f"{self.root}/hub/models/{model_id}/memory", headers=self.headers, timeout=30,
                       json={"peak_gb": peak_gb, "device": device, "source": source})
        if r.status_code >= 400:
            raise RuntimeError(f"recording memory of {model_id!r}: {r.status_code} {r.text[:500]}")
        return r.json()


# ---- one timed request ----

async def stream_chat(client: httpx.AsyncClient, v1: str, model: str, prompt: str, max_tokens: int,
                      on_first: Callable[[], None] | None = None) -> RequestRecord:
    """A streamed chat completion; records when each chunk with text arrives (vLLM's bench serve does the same)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    rec = RequestRecord(start=time.perf_counter())
    try:
        async with client.stream("POST", v1 + "/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                rec.error = f"HTTP {r.status_code}: {r.text[:300]}"
                return rec
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    continue
                now = time.perf_counter()
                obj = json.loads(data)
                if "error" in obj:
                    rec.error = str(obj["error"].get("message", obj["error"]))[:300]
                    continue
                for choice in obj.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or choice.get("text")
                    if text:
                        if not rec.chunk_times and on_first:
                            on_first()
                        rec.chunk_times.append(now)
                        break
                if usage := obj.get("usage"):
                    rec.usage_tokens = usage.get("completion_tokens")
        rec.end = time.perf_counter()
    except httpx.HTTPError as err:
        rec.error = f"{type(err).__name__}: {err}"
    return rec


async def generate_images(client: httpx.AsyncClient, v1: str, model: str, prompt: str, size: str, n: int,
                          steps: int | None = None, steps_field: str = "num_inference_steps") -> dict[str, Any]:
    """One /images/generations request: {"seconds", "images", "ok", "error", "peak_memory_mb"}."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "size": size, "n": n, "response_format": "b64_json"}
    if steps is not None:
        body[steps_field] = steps
    t0 = time.perf_counter()
    try:
        r = await client.post(v1 + "/images/generations", json=body)
    except httpx.HTTPError as err:
        return {"seconds": time.perf_counter() - t0, "images": 0, "ok": False, "error": f"{type(err).__name__}: {err}"}
    seconds = time.perf_counter() - t0
    if r.status_code != 200:
        return {"seconds": seconds, "images": 0, "ok": False, "error": f"HTTP {r.status_code}: {r.text[:300]}"}
    peak = r.headers.get("x-peak-memory-mb")
    return {"seconds": seconds, "images": len(r.json().get("data") or []), "ok": True, "error": None,
            "peak_memory_mb": float(peak) if peak else None}


async def chat_once(client: httpx.AsyncClient, v1: str, model: str, content: str = "hi",
                    max_tokens: int = 8) -> float:
    """One small non-streaming chat; seconds from sending to the whole answer (raises on an error status)."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    t0 = time.perf_counter()
    r = await client.post(v1 + "/chat/completions", json=body)
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"{v1}: HTTP {r.status_code}: {r.text[:300]}")
    return elapsed


async def run_concurrent(make: Callable[[int], Awaitable[T]], total: int, concurrency: int) -> tuple[list[T], float]:
    """Run make(0..total-1) with at most `concurrency` in flight; the results in order, and the wall seconds."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> T:
        async with sem:
            return await make(i)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(total)))
    return list(results), time.perf_counter() - t0
