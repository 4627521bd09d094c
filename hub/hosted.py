"""The gateway's client to servers the hub does not manage (the `openai` engine: hosted APIs, a server on another
machine): httpx, with HTTP/2 where the server offers it (ALPN), the environment's proxy settings (HTTP_PROXY,
HTTPS_PROXY, ALL_PROXY, NO_PROXY), certificates from SSL_CERT_FILE, and a cap on connections per server. The hub's
own engines keep hub/upstream.py's pool: it costs less per request and needs none of this.

It has the surface of hub/upstream.py's EnginePool (request -> an answer with status, headers, read, chunks,
release) and raises the same EngineError classes, with the same timeouts: the gateway serves both alike. A request
is sent once: httpx retries only connections that failed before the request was written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx

from hub.upstream import (
    AnswerTimeout,
    Call,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    EngineError,
    IdleTimeout,
    dropped,
)


def engine_error(err: Exception) -> EngineError:
    """An httpx error (or any other failure of the client: a proxy scheme it cannot speak, say) as the gateway's
    EngineError."""
    if isinstance(err, EngineError):
        return err
    if not isinstance(err, httpx.HTTPError):
        return ConnectFailed(f"the client to the server failed: {type(err).__name__}: {err}")
    if isinstance(err, httpx.ConnectTimeout):
        return ConnectTimeout(f"no connection within the connect timeout: {err or type(err).__name__}")
    if isinstance(err, httpx.ProxyError):
        return ConnectFailed(f"the proxy refused or failed: {err}")
    if isinstance(err, httpx.ConnectError):
        return ConnectFailed(f"cannot connect: {err}")
    return Disconnected(f"the server broke off its answer: {type(err).__name__}: {err or 'no detail'}")


def header_lines(raw: bytes) -> list[tuple[bytes, bytes]]:
    """Header lines ("name: value\\r\\n" each) as pairs."""
    out = []
    for line in raw.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name.strip(), value.strip()))
    return out


CLOSING: set[asyncio.Task] = set()


class HostedAnswer:
    """A server's answer: status and headers (names lower-cased, as bytes), its body read once."""

    def __init__(self, resp: httpx.Response, call: Call | None) -> None:
        self.resp, self.call = resp, call
        self.status = resp.status_code
        self.headers = [(k.lower(), v) for k, v in resp.headers.raw]
        self.closed = asyncio.get_running_loop().create_future()  # set when its Call drops it
        self.released = False
        if call is not None:
            call.bind(self._drop)

    def _drop(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    async def read(self, idle_s: float | None = None) -> bytes:
        """The whole body (as the server sent it: a coding it applied stays)."""
        return b"".join([chunk async for chunk in self.chunks(idle_s)])

    async def chunks(self, idle_s: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives; IdleTimeout when nothing comes for `idle_s`, Closed once its Call drops it."""
        it = self.resp.aiter_raw()
        while True:
            nxt = asyncio.ensure_future(it.__anext__())
            try:
                done, _ = await asyncio.wait({nxt, self.closed}, timeout=idle_s,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not nxt.done():  # a timeout, a drop, or the reader itself cancelled: the read stops here
                    nxt.cancel()
                    with contextlib.suppress(BaseException):
                        await nxt
            if nxt not in done or nxt.cancelled():
                await self.resp.aclose()
                if self.closed.done():
                    raise dropped()
                raise IdleTimeout(f"the server sent nothing more of its answer for {idle_s:g} s")
            try:
                chunk = nxt.result()
            except StopAsyncIteration:
                return
            except Exception as err:
                raise engine_error(err) from None
            yield chunk

    def release(self) -> None:
        """The answer is done with: its connection goes back to httpx's pool (closed if unread)."""
        if not self.released:
            self.released = True
            if self.call is not None:
                self.call.unbind()
            if not self.resp.is_closed:
                task = asyncio.get_running_loop().create_task(self.resp.aclose())
                CLOSING.add(task)  # held until done: the loop keeps only weak references to tasks
                task.add_done_callback(CLOSING.discard)


class HostedPool:
    """One httpx client per server, created on its first request."""

    def __init__(self, connect_timeout_s: float = 10.0, max_connections: int = 0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_connections = max_connections or None
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.closed = False

    def client(self, base_url: str) -> httpx.AsyncClient:
        """The client of `base_url` (proxies from the environment, HTTP/2 where offered)."""
        c = self.clients.get(base_url)
        if c is None:
            limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=20,
                                  keepalive_expiry=30)
            # pool=None: a request waits for a free connection under the cap; answer_timeout bounds the whole wait
            timeout = httpx.Timeout(connect=self.connect_timeout_s, read=None, write=60.0, pool=None)
            c = self.clients[base_url] = httpx.AsyncClient(http2=True, trust_env=True, limits=limits,
                                                           timeout=timeout, follow_redirects=False)
        return c

    async def request(self, method: str, base_url: str, target: str, headers: bytes = b"", body: bytes = b"",
                      answer_s: float | None = None, call: Call | None = None) -> HostedAnswer:
        """Send the request; the answer once its head has arrived (AnswerTimeout past `answer_s`)."""
        if self.closed:
            raise ConnectFailed("the hub is shutting down")
        if call is not None and call.closed:
            raise dropped()
        try:
            client = self.client(base_url)
            req = client.build_request(method, base_url.rstrip("/") + target, headers=header_lines(headers),
                                       content=body)
        except Exception as err:  # an environment proxy httpx cannot use, a URL it refuses
            raise engine_error(err) from None
        sending = asyncio.ensure_future(client.send(req, stream=True))
        if call is not None:
            call.bind(sending.cancel)
        try:
            done, _ = await asyncio.wait({sending}, timeout=answer_s)
        except BaseException:
            sending.cancel()
            raise
        if not done:
            sending.cancel()
            with contextlib.suppress(BaseException):
                await sending
            raise AnswerTimeout(f"the server sent no answer within {answer_s:g} s")
        if sending.cancelled():
            raise dropped()
        try:
            resp = sending.result()
        except Exception as err:
            raise engine_error(err) from None
        return HostedAnswer(resp, call)

    async def close(self) -> None:
        """Close every client; later requests are refused."""
        self.closed = True
        for c in self.clients.values():
            await c.aclose()
        self.clients.clear()
