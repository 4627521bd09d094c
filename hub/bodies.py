"""The client's side of a request at the hub's boundary: bodies read within a size limit, JSON bodies checked before
anything reads them, and the watcher that sees the client leave. hub/gateway.py uses them on the route table's
endpoints and on the /hub admin API.

What a JSON body must be: UTF-8, an object, without NaN or Infinity (not JSON, though Python's parser takes them),
without a lone surrogate escape (\\ud800 with no pair: not Unicode, and engines fail on it), nested at most
`max_depth` deep. Each check that costs time scales with the body and starts only when a cheap scan says it might
fail: a body nested deeper than max_depth has more brackets than that (counted in C, or found by memchr in a large
body), and a lone surrogate needs a backslash (memchr) and a \\ud8-\\udf escape (a regex) before the parsed body is
walked. Python's own parser stops at about 1000 levels with RecursionError, caught as the same 400.
Measured against json.loads alone: nothing more on a 100-byte chat or a 1 MB base64 image; about +15 us on a 14 KB
chat with newlines (the regex); a 12 KB body of 600 small objects pays the walk, about as much as json.loads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.types import Receive

from hub.errors import PayloadTooLarge, RequestError

MB = 1024 * 1024
WATCH_AFTER_S = 0.05  # when a request's disconnect watcher starts (see Watch)
log = logging.getLogger("hub.gateway")


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class BodyLimit:
    """The most bytes a kind of body may have, and the [hub] key that sets it (for the 413's message)."""

    def __init__(self, mb: float, key: str, what: str) -> None:
        self.bytes, self.mb, self.key, self.what = int(mb * MB), mb, key, what

    def error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is larger than {self.mb:g} MB, the hub's limit for {self.what} "
                               f"([hub] {self.key} in the registry): send less, or raise the limit")

    def check_length(self, headers: Headers) -> None:
        """PayloadTooLarge from Content-Length, before a byte of the body is read."""
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.bytes:
            raise self.error()


async def read_body(receive: Receive, limit: BodyLimit | None = None) -> bytes:
    """The whole request body; PayloadTooLarge as soon as it passes `limit` (a chunked body has no length)."""
    chunks = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunk = msg.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit.bytes:
            raise limit.error()
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (send a number or null)")


def _finite(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant)  # the default decoder but for NaN and Infinity
_STRICT_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTAINERS = {dict, list}


def json_object(raw: bytes, max_depth: int = 64, finite: bool = False) -> dict[str, Any]:
    """A JSON request body: a UTF-8 object without NaN, Infinity or lone surrogates, nested at most `max_depth`
    deep (`finite`: no number out of a double's range either); RequestError naming the problem otherwise."""
    if not raw.strip():
        raise RequestError("the request body is empty: send a JSON object (with 'model' and the endpoint's fields)")
    try:
        text = raw.decode()
    except UnicodeDecodeError as err:
        raise RequestError(f"the request body is not valid UTF-8 (byte {err.start}: {err.reason}): JSON is sent "
                           "as UTF-8") from None
    try:
        body = (_STRICT_DECODER if finite else _DECODER).decode(text)
    except RecursionError:  # the C parser's own bound, far deeper than max_depth
        raise RequestError(depth_message(max_depth)) from None
    except ValueError as err:
        raise RequestError(f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, not {json_type(body)}")
    # A body nested deeper than max_depth has more brackets than that: count them before walking it.
    if more_brackets_than(raw, max_depth) and nested_deeper(body, max_depth):
        raise RequestError(depth_message(max_depth))
    # A lone surrogate comes only from a \ud800-\udfff escape: look for a backslash (memchr) before anything else.
    if raw.find(b"\\") >= 0 and _SURROGATE_ESCAPE.search(raw) and lone_surrogate(body):
        raise RequestError("the request body holds a lone surrogate escape (\\ud800 to \\udfff without its pair): "
                           "strings must be valid Unicode")
    return body


def depth_message(max_depth: int) -> str:
    return (f"the JSON body is nested more than {max_depth} levels deep, the hub's limit ([hub] max_json_depth in "
            "the registry)")


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type."""
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null", dict: "an object"}.get(type(value), type(value).__name__)


def more_brackets_than(raw: bytes, n: int) -> bool:
    """Whether `raw` has more than `n` opening brackets: counted in C where the body is small, else found one by
    one with memchr (a large body is mostly long strings: an image, an audio clip), stopping after n + 1."""
    if len(raw) < 8192:
        return raw.count(b"{") + raw.count(b"[") > n
    seen = 0
    for bracket in (b"{", b"["):
        i = raw.find(bracket)
        while i >= 0:
            seen += 1
            if seen > n:
                return True
            i = raw.find(bracket, i + 1)
    return False


def nested_deeper(body: Any, max_depth: int) -> bool:
    """Whether `body` nests containers more than `max_depth` deep (breadth first, one level at a time)."""
    level = [body]
    for _ in range(max_depth):
        level = [v for o in level for v in (o.values() if type(o) is dict else o) if type(v) in _CONTAINERS]
        if not level:
            return False
    return True


def lone_surrogate(body: Any) -> bool:
    """Whether a key or string in `body` holds a lone surrogate (a valid pair was decoded into one character)."""
    stack = [body]
    while stack:
        o = stack.pop()
        if type(o) is str:
            if _SURROGATE.search(o):
                return True
        elif type(o) is dict:
            stack.extend(o)
            stack.extend(o.values())
        elif type(o) is list:
            stack.extend(o)
    return False


class Watch:
    """A request's one disconnect watcher: when its client leaves, `gone` is set (a queued request leaves the queue)
    and `on_gone` runs (the gateway's: drop the engine's request through its Call, in whatever phase it is).

    Its task starts WATCH_AFTER_S into the request, or at once when the request has to wait in its model's queue:
    most requests end sooner, and a task each would cost them a tenth more CPU (benchmarks/router_overhead.py). A
    client that left before then is seen the moment it starts (the server keeps the disconnect)."""

    __slots__ = ("gone", "on_gone", "receive", "task", "timer")

    def __init__(self, receive: Receive, on_gone: Callable[[], None]) -> None:
        self.receive, self.on_gone = receive, on_gone
        self.gone = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self.start)

    def start(self) -> None:
        """Start following the client (once)."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._follow())

    async def wait(self) -> None:
        """Until the client has gone (what the manager calls while the request waits in the queue)."""
        self.start()
        await self.gone.wait()

    async def _follow(self) -> None:
        try:
            while (await self.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # the server's receive failed: the client cannot be followed any more, nor reached
            log.debug("receive failed while watching for the client leaving", exc_info=True)
        self.gone.set()
        self.on_gone()

    def stop(self) -> None:
        """The request is over."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
