"""A raw HTTP engine for the request-path tests: answers as old or broken servers do, which uvicorn never would.

Run: python tests/rawengine.py --port PORT [--stats FILE]
Every answer closes its connection and most are delimited by that close (no Content-Length, not chunked), as
HTTP/1.0-style servers answer. What a POST gets depends on a word in its body:
- "cut": an event stream (chat chunks) that ends before its `data: [DONE]`;
- "whole": the same stream with its `data: [DONE]`;
- "silent": the head never comes; the engine waits for the hub to close the connection;
- "stall": the head and one event, then silence, until the hub closes the connection;
- "slow": a non-streamed answer after 30 s, unless the hub closes the connection first (counted as dropped);
- "audio": 10 of the 1000 bytes of audio its head announces, then the close (an engine dying mid-answer);
- anything else: a JSON answer at once.
GET /health answers 200; GET /test/stats answers {"requests", "dropped", "by_word"} (how many POSTs carried each
word), so that a test sees what the engine received and whether the hub left; --stats FILE keeps the same JSON in
a file, written after every change. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

STATS: dict = {"requests": 0, "dropped": 0, "by_word": {}}
WORDS = ("cut", "whole", "silent", "stall", "slow", "audio")
STATS_FILE: list[str] = []


def count(key: str, word: str | None = None) -> None:
    """Count one request (or one dropped by the hub) and write the stats file."""
    if word is None:
        STATS[key] += 1
    else:
        STATS["requests"] += 1
        STATS["by_word"][word] = STATS["by_word"].get(word, 0) + 1
    if STATS_FILE:
        with open(STATS_FILE[0] + ".tmp", "w") as f:
            json.dump(STATS, f)
        os.replace(STATS_FILE[0] + ".tmp", STATS_FILE[0])


def chunk(text: str, created: int) -> bytes:
    """One chat.completion.chunk event."""
    body = {"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": created, "model": "raw",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return f"data: {json.dumps(body)}\n\n".encode()


async def until_closed(reader: asyncio.StreamReader, limit: float) -> bool:
    """Wait (at most `limit` s) for the hub to close the connection; whether it did."""
    try:
        return await asyncio.wait_for(reader.read(1), limit) == b""
    except (TimeoutError, ConnectionError):
        return False


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                       if ln.lower().startswith(b"content-length:")), 0)
        body = (await reader.readexactly(length)).decode("utf-8", "replace")
        line = head.split(b"\r\n")[0].decode()
        close = b"connection: close\r\n"
        if line.startswith("GET /health"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + close + b"\r\nok")
        elif line.startswith("GET /test/stats"):
            data = json.dumps(STATS).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
                         % (len(data), close, data))
        elif line.startswith("GET /v1/models"):
            data = json.dumps({"object": "list", "data": [{"id": "raw", "object": "model"}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
                         % (len(data), close, data))
        else:
            word = next((w for w in WORDS if w in body), "")
            count("requests", word)
            now = int(time.time())
            sse = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" + close + b"\r\n"
            if word in ("cut", "whole"):
                writer.write(sse + b"".join(chunk(w, now) for w in ("one ", "two ", "three")))
                if word == "whole":
                    writer.write(b"data: [DONE]\n\n")
            elif word == "silent":
                if await until_closed(reader, 60):
                    count("dropped")
            elif word == "stall":
                writer.write(sse + chunk("one", now))
                await writer.drain()
                if await until_closed(reader, 60):
                    count("dropped")
            elif word == "audio":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: audio/mpeg\r\ncontent-length: 1000\r\n\r\n"
                             + b"\xff\xfb" * 5)
            elif word == "slow":
                if await until_closed(reader, 30):
                    count("dropped")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + close + b"\r\n{}")
            else:
                answer = {"id": "chatcmpl-raw", "object": "chat.completion", "created": now, "model": "raw",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "at once"},
                                       "finish_reason": "stop"}]}
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + close + b"\r\n"
                             + json.dumps(answer).encode())
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="raw")
    p.add_argument("--stats")
    a = p.parse_args()
    if a.stats:
        STATS_FILE.append(a.stats)
    asyncio.run(main(a.port))
