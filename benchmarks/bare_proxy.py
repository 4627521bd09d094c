"""The floor of a Python proxy: a plain ASGI pass-through (no routing, no checks, no logging) with one pooled aiohttp
session to one upstream, under uvicorn with the settings the hub runs with. The router-overhead benchmark runs it as
its `bare` target, to show what any proxy built from these parts pays.

    python -m benchmarks.bare_proxy --upstream http://127.0.0.1:PORT --port P
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server", b"content-length"}


def make_app(upstream: str) -> Any:
    """An ASGI app that sends every HTTP request on to `upstream` and streams the answer back."""
    state: dict[str, aiohttp.ClientSession] = {}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                                                       timeout=aiohttp.ClientTimeout(total=None))
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await state["s"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        url = upstream + scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in (b"content-type", b"authorization")}
        async with state["s"].request(scope["method"], url, data=body, headers=headers) as r:
            out = [(k, v) for k, v in r.raw_headers if k.lower() not in HOP]
            if r.content_length is not None:
                data = await r.read()
                out.append((b"content-length", str(len(data)).encode()))
                await send({"type": "http.response.start", "status": r.status, "headers": out})
                await send({"type": "http.response.body", "body": data})
                return
            await send({"type": "http.response.start", "status": r.status, "headers": out})
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    """Command line: serve the pass-through."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bare_proxy", description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="the upstream's root URL (no /v1)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    uvicorn.run(make_app(a.upstream.rstrip("/")), host=a.host, port=a.port, log_level="warning",
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
