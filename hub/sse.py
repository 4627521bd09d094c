"""Server-sent events read off a response's lines: the web app's image streams and the experiment runner's image
cells both read the image server's events and its progress comments (`: progress {...}`) with it."""

from __future__ import annotations

from collections.abc import Iterator


def sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) of each server-sent event, and ("comment", text) of each comment line."""
    event, data = None, []
    for line in lines:
        if line.startswith(":"):
            yield "comment", line[1:].strip()
            continue
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = None, []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event or "message", "\n".join(data)
