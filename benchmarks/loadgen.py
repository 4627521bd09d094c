"""A load generator for small chat requests, cheap enough not to be what a proxy benchmark measures.

aiohttp (its HTTP parser is C) with one session per target and keep-alive connections, the request body encoded
once, `c` worker coroutines pulling from one counter (no task or semaphore per request), uvloop when it is
installed, and the loop in its own thread so that callers inside a running loop (a Jupyter kernel) can use it and
the thread alone can be pinned to a core. A plain request is timed to the end of its answer; a stream to its first
body chunk (the first SSE event) and to its end. The thread's CPU time per request is kept: it says what the
generator itself costs, next to what it measures.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import aiohttp

T = TypeVar("T")
Mode = Literal["plain", "stream"]
HEADERS = {"content-type": "application/json"}


def chat_body(model: str, prompt: str, stream: bool, max_tokens: int = 16) -> bytes:
    """A chat completion request, encoded."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


@dataclass
class Burst:
    """What one burst of requests at one concurrency level saw (times in seconds, perf_counter)."""

    concurrency: int
    total: list[float] = field(default_factory=list)  # per request: send -> end of the answer
    first: list[float] = field(default_factory=list)  # per stream: send -> first body chunk
    done: list[float] = field(default_factory=list)  # when each request ended
    start: float = 0.0  # when the burst began
    cpu_s: float = 0.0  # CPU time of the generator's thread during the burst

    @property
    def requests_per_s(self) -> float:
        """Completions per second while `concurrency` requests were in flight: from the first completion to the
        one that let the last request go out (the ramp-down after it is left out); the whole burst when that
        window holds fewer than `concurrency` completions."""
        d, c = sorted(self.done), self.concurrency
        k = len(d) - c - 1  # completions after d[0] with c still in flight
        if k >= c and d[k] > d[0]:
            return k / (d[k] - d[0])
        span = d[-1] - self.start if d else 0.0
        return len(d) / span if span > 0 else math.nan


async def plain(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, float]:
    """One non-streaming request: (seconds to the whole answer, end time)."""
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=HEADERS) as r:
        data = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}: {data[:300]!r}")
    t1 = time.perf_counter()
    return t1 - t0, t1


async def stream(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, float, float]:
    """One streamed request: (seconds to the first body chunk, seconds to the end, end time). The stream must end
    with `data: [DONE]`."""
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=HEADERS) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}: {(await r.read())[:300]!r}")
        tail = await r.content.readany()
        t1 = time.perf_counter()
        while chunk := await r.content.readany():
            tail = tail[-16:] + chunk
    t2 = time.perf_counter()
    if b"[DONE]" not in tail:
        raise RuntimeError(f"{url}: the stream ended without data: [DONE] (last bytes {tail[-100:]!r})")
    return t1 - t0, t2 - t0, t2


async def burst(session: aiohttp.ClientSession, url: str, body: bytes, mode: Mode, n: int, c: int) -> Burst:
    """n requests with c in flight."""
    out = Burst(c)
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if mode == "stream":
                first, total, end = await stream(session, url, body)
                out.first.append(first)
            else:
                total, end = await plain(session, url, body)
            out.total.append(total)
            out.done.append(end)

    cpu0, out.start = time.thread_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(c, n))))
    out.cpu_s = time.thread_time() - cpu0
    return out


def session(c: int) -> aiohttp.ClientSession:
    """A session with up to c keep-alive connections (call inside the running loop)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c, limit_per_host=c, keepalive_timeout=60,
                                                                use_dns_cache=True),
                                 timeout=aiohttp.ClientTimeout(total=120))


def run_in_thread(make: Callable[[], Coroutine[Any, Any, T]], cores: set[int] | None = None) -> T:
    """Run make() on a fresh event loop (uvloop's when installed) in a new thread, pinned to `cores` if given."""
    try:
        import uvloop
        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    result: list[T] = []
    error: list[BaseException] = []

    def main() -> None:
        if cores:
            os.sched_setaffinity(0, cores)  # this thread only (and the threads it starts)
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                result.append(runner.run(make()))
        except BaseException as err:
            error.append(err)

    t = threading.Thread(target=main, name="loadgen")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]
