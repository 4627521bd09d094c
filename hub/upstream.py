"""The gateway's HTTP/1.1 client to the engines: pooled keep-alive connections, the answer parsed by httptools (the
parser uvicorn serves the hub with), its body handed on as it arrives, with flow control.

Why its own client: on the router benchmark (benchmarks/router_overhead.py) aiohttp's client was the largest cost
of a proxied request, more than the hub's own code and uvicorn together. An engine the hub talks to is a known
HTTP/1.1 server (vLLM, the image server, a command engine, an OpenAI-compatible API): a request is written in one
go with its Content-Length, and only the answer needs a real parser.

    pool = EnginePool()
    resp = await pool.request("POST", "http://127.0.0.1:8001", "/v1/chat/completions", b"content-type: ...\\r\\n",
                              body)
    resp.status, resp.headers          # header names lower-cased, as bytes
    data = await resp.read()           # the whole body; or: async for chunk in resp.chunks(): ...
    resp.release()                     # the connection goes back to the pool (if the answer was read to its end)
    resp.close()                       # drop the connection: the engine sees the client leave

Errors are EngineError: the engine could not be reached (ConnectFailed), broke off its answer (Disconnected,
BadAnswer), or kept silent too long (AnswerTimeout before the answer's head, IdleTimeout between its body's bytes).
An idle connection is dropped after `keepalive_s`, before the engines' servers drop theirs (uvicorn's and vLLM's
5 s). A request is sent again on a new connection only when the engine cannot have received it: its kept connection
was found closed before the request was written (NotSent), or, for an idempotent method, the engine closed it at
once without a byte of answer (a close racing its keep-alive timer). A POST the engine may hold is never sent twice
(RFC 9112 9.3.1). A `Call` passed along lets another task drop the request in any phase (its client left). Interim
answers (1xx) are skipped. `decoded` undoes gzip or deflate on a whole answer from an engine that compressed it
anyway (hub/codings.py).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 1 << 20  # bytes of an answer held before reading from the engine pauses (a slow client)
LOW_WATER = HIGH_WATER // 4  # reading resumes below this
WRITE_JOIN = 1 << 16  # bodies up to this size go out in one write with the head
# An answer's head (interim 1xx answers included) past this size is refused: httptools keeps a header whole in memory
# until it ends, and an engine that never ends its head would grow the hub's memory without bound
MAX_HEAD = 1 << 18
# A kept connection that the engine closes this long after the request went out was not closed idle (that close
# crosses the request on the wire, within a round trip): the engine had the request, so it is not sent again
RETRY_WITHIN_S = 1.0


class EngineError(Exception):
    """The engine could not be reached, or broke off its answer."""


class ConnectFailed(EngineError):
    """No connection to the engine."""


class Disconnected(EngineError):
    """The engine closed the connection before its answer ended."""


class BadAnswer(EngineError):
    """The engine's answer is not valid HTTP/1.1."""


class Closed(EngineError):
    """The answer was closed on the hub's side (its client left)."""


class ConnectTimeout(ConnectFailed):
    """No connection to the engine within the time allowed."""


class NotSent(Disconnected):
    """The connection was found closed before the request was written: the engine cannot have received it."""


class AnswerTimeout(EngineError):
    """The engine sent no answer head within the time allowed."""


class IdleTimeout(EngineError):
    """The engine sent nothing more of its answer within the time allowed between two pieces."""


# Methods that may be sent again when a kept connection dies under them (RFC 9110 9.2.2); never POST or PATCH
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})


class Call:
    """One request to an engine, droppable from another task in any phase: waiting for a connection, for the
    answer's head, or reading its body (the gateway's disconnect watcher holds it). The client that carries the
    request binds what drops it (this module's pool, or hub/hosted.py's) and unbinds it once the answer is read."""

    __slots__ = ("closed", "closer")

    def __init__(self) -> None:
        self.closer: Callable[[], None] | None = None
        self.closed = False

    def bind(self, closer: Callable[[], None]) -> None:
        """What close() does while the request is under way (done at once if the call was closed already)."""
        if self.closed:
            closer()
            return
        self.closer = closer

    def unbind(self) -> None:
        """The answer is read: its connection may serve another request, which close() must not touch."""
        self.closer = None

    def close(self) -> None:
        """Drop the request: the engine sees its client leave, and whoever waits on it raises Closed."""
        self.closed = True
        closer, self.closer = self.closer, None
        if closer is not None:
            closer()


def dropped() -> Closed:
    """The error of a request dropped through its Call."""
    return Closed("the request was dropped: its client left")


class Origin:
    """Where an engine listens, parsed once per base URL."""

    __slots__ = ("host", "host_header", "key", "port", "prefix", "tls")

    def __init__(self, base_url: str) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"an engine's URL must be http:// or https:// with a host, not {base_url!r}")
        self.tls = u.scheme == "https"
        self.host, self.port = u.hostname, u.port or (443 if self.tls else 80)
        netloc = u.netloc.rpartition("@")[2]
        self.host_header = (netloc if netloc.isascii() else f"{self.host.encode('idna').decode()}:{self.port}"
                            ).encode()
        self.prefix = u.path.rstrip("/").encode()
        self.key = (self.tls, self.host, self.port)


class Connection(asyncio.Protocol):
    """One keep-alive connection to an engine, and the answer it is reading."""

    def __init__(self, pool: EnginePool, key: tuple[bool, str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.pool, self.key, self.loop = pool, key, loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = self.idle = False
        self.idle_since = 0.0
        self.watchdog: asyncio.TimerHandle | None = None
        self.new_answer()

    def new_answer(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.paused = self.started = self.complete = self.framed = self.keep_alive = self.interim = False
        self.head_bytes = 0
        self.error: EngineError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.stop_watch()
        self.idle_s = 0.0
        self.last_data = 0.0

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.idle:  # nothing was asked: an engine that talks now is broken
            self.transport.close()  # type: ignore[union-attr]
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # not an HttpParserError
            self.broken(BadAnswer("the engine switched protocols (101), which the hub never asks for"))
        except httptools.HttpParserError as err:
            self.broken(BadAnswer(f"the engine's answer is not valid HTTP: {err}"))
        else:
            if not self.head.done():
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD:
                    self.broken(BadAnswer(f"the engine's answer has a head of more than {MAX_HEAD} bytes"))

    def broken(self, err: EngineError) -> None:
        """The engine sent what the parser refuses: the answer being read fails; after a complete answer (bytes past
        its end, a second answer) that answer stands, and only the connection is out of step and never reused."""
        if self.complete:
            self.keep_alive = False
        else:
            self.fail(err)
        self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.idle:  # the engine closed it as it idled
            self.pool.forget(self)
            return
        if self.complete or self.error:
            return
        if self.head.done() and not self.framed:  # no Content-Length and not chunked: the answer ends here
            self.complete = True
            self.wake()
            return
        detail = f": {exc}" if exc else ""
        where = "mid-answer" if self.started else "before answering"
        self.fail(Disconnected(f"the engine closed the connection {where}{detail}"))

    def pause_writing(self) -> None:
        pass  # a request is written whole: its body is in memory already

    def resume_writing(self) -> None:
        pass

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: raised as HttpParserCallbackError to data_received
            raise BadAnswer("the engine answered twice")
        self.started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self.framed = True
        elif name == b"transfer-encoding":  # without chunked last, the answer ends at EOF (RFC 9112 6.3)
            self.framed = value.rstrip().lower().endswith(b"chunked")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the final one follows on its heels
            self.interim, self.headers, self.framed = True, [], False
            return
        self.status = status
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.last_data = self.loop.time()
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self.wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self.idle_since = time.monotonic()  # the engine's keep-alive timer starts now, not when the hub puts it back
        self.wake()

    # ---- the answer ----

    def fail(self, err: EngineError) -> None:
        if self.error is None:
            self.error = err
        if not self.head.done():
            self.head.set_exception(err)
            self.head.exception()  # retrieved: whoever waits raises it; nobody else needs asyncio's warning
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        """Until something happens to the answer."""
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    # One timer per answer, not one per wait: it checks the time of the last byte when it fires and re-arms itself
    # while the engine keeps talking (a stream's chunks cost no timer each).

    def no_answer(self, answer_s: float) -> None:
        """The answer's head did not come within `answer_s`: the answer fails and the connection is dropped."""
        if not self.head.done():
            self.fail(AnswerTimeout(f"the engine sent no answer within {answer_s:g} s"))
            if self.transport is not None:
                self.transport.close()

    def watch_body(self, idle_s: float | None) -> None:
        """Fail the answer once the engine stays silent for `idle_s` in its body (armed once per answer)."""
        if idle_s and self.watchdog is None and not self.complete:
            self.idle_s, self.last_data = idle_s, self.loop.time()
            self.watchdog = self.loop.call_later(idle_s, self.check_silence)

    def check_silence(self) -> None:
        self.watchdog = None
        if self.complete or self.error is not None:
            return
        quiet = self.loop.time() - self.last_data
        if self.paused or self.body:  # the hub's client is the slow one: not the engine's silence
            self.watchdog = self.loop.call_later(self.idle_s, self.check_silence)
        elif quiet < self.idle_s:
            self.watchdog = self.loop.call_later(self.idle_s - quiet, self.check_silence)
        else:
            self.silent(self.idle_s)

    def stop_watch(self) -> None:
        """The answer is done with: its timer goes."""
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None

    def drop_request(self) -> None:
        """Its client left (through its Call): the answer being read fails and the engine sees the close."""
        self.fail(dropped())
        if self.transport is not None:
            self.transport.close()

    def silent(self, idle_s: float) -> None:
        """The engine sent nothing for `idle_s`: the answer fails and the connection is dropped."""
        self.fail(IdleTimeout(f"the engine sent nothing more of its answer for {idle_s:g} s"))
        if self.transport is not None:
            self.transport.close()

    def take(self) -> bytes:
        """What has arrived of the body, emptied out; reading resumes if it was paused."""
        data = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self.paused and not self.lost:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data


class Response:
    """An engine's answer: its status and headers, and its body to read once."""

    __slots__ = ("call", "conn", "gate", "headers", "pool", "released", "status")

    def __init__(self, pool: EnginePool, conn: Connection, call: Call | None = None,
                 gate: asyncio.Semaphore | None = None) -> None:
        self.pool, self.conn, self.call, self.gate, self.released = pool, conn, call, gate, False
        self.status, self.headers = conn.status, conn.headers

    async def read(self, idle_s: float | None = None) -> bytes:
        """The whole body; IdleTimeout when the engine sends nothing for `idle_s` in the middle of it."""
        c, parts = self.conn, []
        while True:
            if c.body:
                parts.append(c.take())
            if c.error is not None:
                raise c.error
            if c.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            c.watch_body(idle_s)
            await c.wait()

    async def chunks(self, idle_s: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives: what has arrived since the last chunk, each time; IdleTimeout when the engine
        sends nothing for `idle_s`."""
        c = self.conn
        while True:
            if c.body:
                yield c.take()
            elif c.error is not None:
                raise c.error
            elif c.complete:
                return
            else:
                c.watch_body(idle_s)
                await c.wait()

    def close(self) -> None:
        """Drop the connection: a chunk being waited for raises Closed, and the engine sees its client leave."""
        c = self.conn
        c.fail(Closed("the answer was closed"))
        if c.transport is not None:
            c.transport.close()
        self.release()

    def release(self) -> None:
        """Give the connection back to the pool if its answer was read to the end, else close it."""
        if not self.released:
            self.released = True
            if self.call is not None:  # the connection may serve another request now: the call lets go of it
                self.call.unbind()
            if self.gate is not None:
                self.gate.release()
            self.conn.stop_watch()
            self.pool.put_back(self.conn)


class EnginePool:
    """Keep-alive connections to the engines, by origin."""

    def __init__(self, keepalive_s: float = 4.0, connect_timeout_s: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None, max_connections: int = 0) -> None:
        self.keepalive_s, self.connect_timeout_s = keepalive_s, connect_timeout_s
        # requests under way to one engine at once (0: no cap); more wait for one to end
        self.max_connections = max_connections
        self.gates: dict[tuple[bool, str, int], asyncio.Semaphore] = {}
        self.ssl_context = ssl_context  # made on the first https:// engine when not given
        self.origins: dict[str, Origin] = {}
        self.idle: dict[tuple[bool, str, int], list[Connection]] = {}
        self.open: set[Connection] = set()
        self.closed = False

    def origin(self, base_url: str) -> Origin:
        o = self.origins.get(base_url)
        if o is None:
            if len(self.origins) > 1024:  # engines come and go on new ports: keep the table bounded
                self.origins.clear()
            try:
                o = self.origins[base_url] = Origin(base_url)
            except ValueError as err:  # also a port out of range
                raise ConnectFailed(f"bad engine URL {base_url!r}: {err}") from None
        return o

    async def request(self, method: str, base_url: str, target: str, headers: bytes = b"", body: bytes = b"",
                      answer_s: float | None = None, call: Call | None = None) -> Response:
        """Send `method target` (a path with its query, as sent on the wire) to the engine at `base_url`, with
        `headers` (complete lines, each ending in CRLF) and `body`; the answer once its head has arrived
        (AnswerTimeout past `answer_s`). `call.close()` from another task drops the request in any phase."""
        if self.closed:
            raise ConnectFailed("the hub is shutting down")
        o = self.origin(base_url)
        length = b"content-length: %d\r\n" % len(body) if body or method in ("POST", "PUT", "PATCH") else b""
        head = b"%s %s%s HTTP/1.1\r\nhost: %s\r\n%s%s\r\n" % (method.encode(), o.prefix, target.encode("latin-1"),
                                                               o.host_header, length, headers)
        gate = None
        if self.max_connections:
            gate = self.gates.get(o.key) or self.gates.setdefault(o.key, asyncio.Semaphore(self.max_connections))
            if gate.locked():
                await self._wait_for(gate, o, answer_s, call)
            else:
                await gate.acquire()  # free: no wait
        try:
            if self.closed:
                raise ConnectFailed("the hub is shutting down")
            resp = await self._send(o, method, head, body, answer_s, call)
        except BaseException:
            if gate is not None:
                gate.release()
            raise
        resp.gate = gate
        return resp

    async def _wait_for(self, gate: asyncio.Semaphore, o: Origin, answer_s: float | None, call: Call | None) -> None:
        """Wait for one of the engine's max_connections, as long as the answer may take, droppable by its Call."""
        acquiring = asyncio.ensure_future(gate.acquire())
        if call is not None:
            call.bind(acquiring.cancel)
        try:
            done, _ = await asyncio.wait({acquiring}, timeout=answer_s)
        except BaseException:  # the request itself is cancelled: a place got meanwhile goes back
            if acquiring.done() and not acquiring.cancelled():
                gate.release()
            acquiring.cancel()
            raise
        finally:
            if call is not None:
                call.unbind()
        if acquiring.cancelled():
            raise dropped()
        if not done:
            acquiring.cancel()
            raise AnswerTimeout(f"no answer within {answer_s:g} s: every one of the {self.max_connections} "
                                f"connections to {o.host}:{o.port} stayed busy (max_engine_connections)")

    async def _send(self, o: Origin, method: str, head: bytes, body: bytes, answer_s: float | None,
                    call: Call | None) -> Response:
        if call is not None and call.closed:
            raise dropped()
        conn = self.kept(o.key)
        if conn is not None:
            sent = time.monotonic()
            try:
                return await self.exchange(conn, head, body, answer_s, call)
            except NotSent:
                pass  # found closed before the request went out: the engine cannot have it
            except Disconnected:
                if (method not in IDEMPOTENT or conn.started or self.closed
                        or time.monotonic() - sent > RETRY_WITHIN_S):
                    raise
                # an idempotent request on a connection the engine closed as it idled: safe to send again
        if call is not None and call.closed:
            raise dropped()
        return await self.exchange(await self.connect(o), head, body, answer_s, call)

    async def exchange(self, conn: Connection, head: bytes, body: bytes, answer_s: float | None = None,
                       call: Call | None = None) -> Response:
        conn.new_answer()
        transport = conn.transport
        assert transport is not None
        if conn.lost or transport.is_closing():  # closed since it was made or kept: no answer would ever come
            self.drop(conn)
            raise NotSent("the engine closed the connection before the request was sent")
        if call is not None:
            if call.closed:
                self.drop(conn)
                raise dropped()
            call.bind(conn.drop_request)
        if len(body) <= WRITE_JOIN:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        timer = conn.loop.call_later(answer_s, conn.no_answer, answer_s) if answer_s else None
        try:
            await conn.head
        except BaseException:
            self.drop(conn)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return Response(self, conn, call)

    def kept(self, key: tuple[bool, str, int]) -> Connection | None:
        """The most recently used idle connection to `key` that is still good."""
        conns = self.idle.get(key)
        now = time.monotonic()
        while conns:
            c = conns.pop()
            c.idle = False
            if not c.lost and not c.transport.is_closing() and now - c.idle_since < self.keepalive_s:  # type: ignore[union-attr]
                return c
            self.drop(c)
        return None

    async def connect(self, o: Origin) -> Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if o.tls:
            tls = self.ssl_context = self.ssl_context or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: Connection(self, o.key, loop), o.host, o.port,
                                                       ssl=tls, server_hostname=o.host if tls else None)
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {o.host}:{o.port} within {self.connect_timeout_s:g} s") from None
        except OSError as err:
            raise ConnectFailed(f"cannot connect to {o.host}:{o.port}: {err.strerror or err}") from None
        except ValueError as err:  # a host that getaddrinfo cannot encode (a label over 63 characters, a NUL)
            raise ConnectFailed(f"cannot connect to {o.host}:{o.port}: {err}") from None
        self.open.add(conn)
        return conn

    def put_back(self, conn: Connection) -> None:
        if (self.closed or conn.lost or conn.error is not None or not conn.complete or not conn.keep_alive
                or conn.body):
            self.drop(conn)
            return
        conn.idle = True
        self.idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: Connection) -> None:
        """An idle connection the engine closed."""
        self.open.discard(conn)
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def drop(self, conn: Connection) -> None:
        self.open.discard(conn)
        if conn.transport is not None and not conn.lost:
            conn.transport.close()

    async def close(self) -> None:
        """Close every connection."""
        self.closed = True
        for conn in list(self.open):
            self.drop(conn)
        self.idle.clear()
