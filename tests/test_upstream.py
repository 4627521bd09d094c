"""hub/upstream.py, the gateway's HTTP/1.1 client, against real sockets: a small asyncio server plays the engine and
answers as each test scripts it (lengths, chunks, an answer ending at EOF, a close mid-answer, garbage, a slow
reader, an idle connection closed by the engine, TLS with a certificate made here by openssl)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import shutil
import ssl
import subprocess
import zlib
from pathlib import Path

import pytest

from hub import upstream
from hub.codings import decoded
from hub.upstream import (
    HIGH_WATER,
    MAX_HEAD,
    BadAnswer,
    Call,
    Closed,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    EnginePool,
    NotSent,
)
from tests.helpers import Engine, Script, answer, echo, says


@pytest.fixture
async def engine_factory():
    made: list[Engine] = []
    pools: list[EnginePool] = []

    async def make(script: Script, **pool_kw) -> tuple[Engine, EnginePool, str]:
        e = Engine(script)
        made.append(e)
        url = await e.start(pool_kw.pop("tls", None))
        pool = EnginePool(**pool_kw)
        pools.append(pool)
        return e, pool, url

    yield make
    for p in pools:
        await p.close()
    for e in made:
        await e.stop()


async def test_a_sized_answer_and_the_connection_kept_for_the_next(engine_factory) -> None:
    e, pool, url = await engine_factory(echo)
    for n in (0, 5, 100_000):
        r = await pool.request("POST", url, "/v1/chat/completions?beta=true", b"content-type: application/json\r\n",
                               b"x" * n)
        assert r.status == 200 and (b"content-type", b"application/json") in r.headers
        assert await r.read() == b'{"got": %d}' % n
        r.release()
    assert e.connections == 1
    head, _ = e.requests[0]
    assert head.startswith(b"POST /v1/chat/completions?beta=true HTTP/1.1\r\n")
    assert b"\r\ncontent-length: 0\r\n" in head and b"\r\ncontent-type: application/json\r\n" in head
    get = await pool.request("GET", url, "/v1/responses/r1")
    await get.read()
    get.release()
    assert b"content-length" not in e.requests[-1][0]  # a GET without a body says nothing of one


async def test_chunks_are_handed_on_as_they_arrive(engine_factory) -> None:
    gate = asyncio.Event()

    async def chunked(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await gate.wait()  # the second chunk only once the client has read the first
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()
        return True

    e, pool, url = await engine_factory(chunked)
    r = await pool.request("POST", url, "/v1/chat/completions", b"", b"{}")
    got = []
    async for chunk in r.chunks():
        got.append(chunk)
        gate.set()
    r.release()
    assert got == [b"data: 1", b"data: 2"]
    again = await pool.request("POST", url, "/v1/chat/completions", b"", b"{}")
    assert await again.read() == b"data: 1data: 2" and e.connections == 1


async def test_an_answer_without_a_length_ends_when_the_engine_closes(engine_factory) -> None:
    e, pool, url = await engine_factory(says(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it", keep=False))
    for _ in range(2):
        r = await pool.request("POST", url, "/x", b"", b"{}")
        assert await r.read() == b"all of it"
        r.release()
    assert e.connections == 2  # not kept: the answer ended the connection


async def test_an_engine_that_dies_mid_answer_is_an_error_not_a_short_answer(engine_factory) -> None:
    _, pool, url = await engine_factory(says(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part", keep=False))
    r = await pool.request("POST", url, "/x", b"", b"{}")
    with pytest.raises(Disconnected, match="mid-answer"):
        await r.read()
    r.release()
    s = await pool.request("POST", url, "/x", b"", b"{}")
    with pytest.raises(Disconnected):
        async for _ in s.chunks():
            pass


async def test_an_engine_that_closes_before_answering(engine_factory) -> None:
    async def hangs_up(reader, writer, head, body) -> bool:
        return False

    e, pool, url = await engine_factory(hangs_up)
    with pytest.raises(Disconnected, match="before answering"):
        await pool.request("POST", url, "/x", b"", b"{}")
    assert e.connections == 1  # a new connection is not retried: only a kept one the engine closed as it idled


async def test_a_kept_connection_the_engine_closed_is_replaced_without_an_error(engine_factory) -> None:
    async def once(reader, writer, head, body) -> bool:
        writer.write(answer(b"{}"))
        await writer.drain()
        return len(e.requests) != 1  # closes the first connection after its answer, silently for the client

    e, pool, url = await engine_factory(once)
    r = await pool.request("POST", url, "/x", b"", b"{}")
    await r.read()
    r.release()
    await asyncio.sleep(0.05)  # the close arrives while the connection idles
    r = await pool.request("POST", url, "/x", b"", b"{}")
    assert await r.read() == b"{}" and e.connections == 2


async def test_idle_connections_expire_before_the_engines_keep_alive(engine_factory) -> None:
    e, pool, url = await engine_factory(echo, keepalive_s=0.05)
    for _ in range(2):
        r = await pool.request("POST", url, "/x", b"", b"{}")
        await r.read()
        r.release()
        await asyncio.sleep(0.1)
    assert e.connections == 2


async def test_connect_failure_names_the_engine() -> None:
    pool = EnginePool(connect_timeout_s=2)
    with pytest.raises(ConnectFailed, match=r"cannot connect to 127\.0\.0\.1:1"):
        await pool.request("POST", "http://127.0.0.1:1", "/x", b"", b"{}")
    with pytest.raises(ConnectFailed, match="bad engine URL"):
        await pool.request("POST", "ftp://127.0.0.1:1", "/x", b"", b"{}")
    for host in ("a" * 64 + ".example", "ex\x00ample"):  # getaddrinfo raises ValueError (UnicodeError) for these
        with pytest.raises(ConnectFailed, match="cannot connect"):
            await pool.request("POST", f"http://{host}:8000", "/x", b"", b"{}")
    await pool.close()


async def test_garbage_is_a_bad_answer(engine_factory) -> None:
    _, pool, url = await engine_factory(says(b"SMTP ready\r\n\r\n"))
    with pytest.raises(BadAnswer, match="not valid HTTP"):
        await pool.request("POST", url, "/x", b"", b"{}")


async def test_interim_answers_are_skipped_for_the_final_one(engine_factory) -> None:
    async def hints(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the final answer comes later: the 1xx is not taken for it
        writer.write(answer(b"final"))
        await writer.drain()
        return True

    e, pool, url = await engine_factory(hints)
    for _ in range(2):
        r = await pool.request("POST", url, "/x", b"", b"{}")
        assert r.status == 200 and (b"link", b"</a.css>") not in r.headers
        assert await r.read() == b"final"
        r.release()
    assert e.connections == 1


async def test_switching_protocols_unasked_is_a_bad_answer(engine_factory, caplog) -> None:
    _, pool, url = await engine_factory(says(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                                             b"upgrade: h2c\r\n\r\n\x00\x00"))
    with pytest.raises(BadAnswer, match="switched protocols"):
        await pool.request("POST", url, "/x", b"", b"{}")
    assert "Fatal error" not in caplog.text  # not an exception out of data_received


@pytest.mark.parametrize("after", [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra", b"junk",
                                   b"HTTP/1.1 200 OK\r\n"])
async def test_bytes_past_the_end_of_an_answer_are_not_read_as_the_next(engine_factory, after: bytes) -> None:
    e, pool, url = await engine_factory(says(answer(b"ok") + after))  # one write: one segment
    for _ in range(2):
        r = await pool.request("POST", url, "/x", b"", b"{}")
        assert await r.read() == b"ok" and [v for k, v in r.headers if k == b"content-length"] == [b"2"]
        r.release()
    assert e.connections == 2  # the connection that was out of step is not reused


async def test_an_answer_with_a_transfer_coding_but_not_chunked_ends_at_eof(engine_factory) -> None:
    _, pool, url = await engine_factory(says(b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\nall of it",
                                             keep=False))
    r = await pool.request("POST", url, "/x", b"", b"{}")
    assert await r.read() == b"all of it"  # RFC 9112 6.3: not an engine that broke off
    r.release()


async def test_an_endless_head_is_refused_before_it_fills_memory(engine_factory) -> None:
    async def endless(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nx-junk: ")
        for _ in range(64):
            writer.write(b"a" * (MAX_HEAD // 4))
            await writer.drain()
        return False

    _, pool, url = await engine_factory(endless)
    with pytest.raises(BadAnswer, match="head of more than"):
        await asyncio.wait_for(pool.request("POST", url, "/x", b"", b"{}"), 10)


async def test_a_request_the_engine_had_is_not_sent_twice(engine_factory, monkeypatch) -> None:
    monkeypatch.setattr(upstream, "RETRY_WITHIN_S", 0.05)

    async def then_dies(reader, writer, head, body) -> bool:
        if len(e.requests) % 2:  # the first and third
            writer.write(answer(b"{}"))
            await writer.drain()
            return True
        await asyncio.sleep(0.3)  # works on it, then closes without an answer (a worker killed on a timeout, say)
        return False

    e, pool, url = await engine_factory(then_dies)
    r = await pool.request("POST", url, "/x", b"", b"{}")
    await r.read()
    r.release()
    with pytest.raises(Disconnected, match="before answering"):
        await pool.request("POST", url, "/x", b"", b"{}")
    assert len(e.requests) == 2
    r = await pool.request("POST", url, "/x", b"", b"{}")  # on a new connection
    assert await r.read() == b"{}"
    r.release()
    # nor by a pool that closes while the request waits on a kept connection
    task = asyncio.create_task(pool.request("POST", url, "/x", b"", b"{}"))
    await asyncio.sleep(0.05)
    await pool.close()
    with pytest.raises(Disconnected):
        await task
    assert len(e.requests) == 4
    await asyncio.sleep(0.3)  # the engine's handler ends


async def test_a_slow_reader_pauses_the_engine_and_memory_stays_bounded(engine_factory) -> None:
    total = 16 * HIGH_WATER
    sent = asyncio.Event()

    async def big(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        for _ in range(64):
            writer.write(b"x" * (total // 64))
            await writer.drain()  # blocks once the client stops reading
        sent.set()
        return True

    _, pool, url = await engine_factory(big)
    r = await pool.request("POST", url, "/x", b"", b"{}")
    async with asyncio.timeout(10):  # the client reads nothing: its buffer fills until the connection pauses
        while not r.conn.paused:
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.3)  # and for a while longer: the engine must be held back
    assert not sent.is_set()
    assert r.conn.buffered <= 2 * HIGH_WATER and r.conn.paused
    n = 0
    async for chunk in r.chunks():
        n += len(chunk)
    assert n == total and sent.is_set()
    r.release()


async def test_close_mid_stream_drops_the_connection_at_the_engine(engine_factory) -> None:
    async def endless(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"5\r\ntick\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    e, pool, url = await engine_factory(endless)
    r = await pool.request("POST", url, "/x", b"", b"{}")

    async def reader() -> None:
        async for _ in r.chunks():
            pass

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.05)
    r.close()
    with pytest.raises(Closed):
        await task
    await asyncio.wait_for(e.closed.wait(), 5)
    assert not pool.open


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command to make a certificate")
async def test_https_engines(engine_factory, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    _, pool, url = await engine_factory(echo, tls=server, ssl_context=client)
    r = await pool.request("POST", url, "/v1/embeddings", b"", b"abc")
    assert await r.read() == b'{"got": 3}'
    r.release()
    stranger = EnginePool()  # the system's CAs do not know this certificate
    with pytest.raises(ConnectFailed):
        await stranger.request("POST", url, "/x", b"", b"{}")
    await stranger.close()


def test_a_compressed_answer_is_decoded_for_the_gateway_to_read() -> None:
    body = b'{"error": {"message": "no"}}'
    headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
    assert decoded(gzip.compress(body), headers) == (body, headers[:1])
    assert decoded(zlib.compress(body), [(b"content-encoding", b"deflate")]) == (body, [])
    assert decoded(gzip.compress(b"part 1, ") + gzip.compress(b"part 2"), headers)[0] == b"part 1, part 2"
    raw = zlib.compressobj(wbits=-15)
    assert decoded(raw.compress(body) + raw.flush(), [(b"content-encoding", b"deflate")])[0] == body
    kept = [(b"content-encoding", b"br")]  # not decodable here: passed on with its header
    assert decoded(b"\x1b\x00", kept) == (b"\x1b\x00", kept)
    assert decoded(b"not gzip", headers) == (b"not gzip", headers)


async def test_a_connection_lost_before_its_request_fails_at_once(engine_factory) -> None:
    _, pool, url = await engine_factory(echo)
    conn = await pool.connect(pool.origin(url))
    conn.transport.close()
    await asyncio.sleep(0.05)
    with pytest.raises(NotSent, match="before the request was sent"):
        await asyncio.wait_for(pool.exchange(conn, b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n", b""), 5)
    assert conn not in pool.open


def closes_the_second_request_unanswered(e_ref: list[Engine]) -> Script:
    """Answers the first request on a connection and keeps it; closes the second without a byte (the engine's
    keep-alive timer racing the request, or a worker that died with the request in hand)."""
    async def script(reader, writer, head, body) -> bool:
        if len(e_ref[0].requests) == 2:
            return False
        writer.write(answer(b"{}"))
        await writer.drain()
        return True
    return script


@pytest.mark.parametrize(("method", "sent"), [("POST", 2), ("PATCH", 2), ("GET", 3), ("DELETE", 3)])
async def test_only_an_idempotent_request_is_sent_again_on_a_kept_connection(engine_factory, method, sent) -> None:
    """RFC 9112 9.3.1: a POST the engine may hold is never sent twice, however quickly the connection died."""
    ref: list[Engine] = []
    e, pool, url = await engine_factory(closes_the_second_request_unanswered(ref))
    ref.append(e)
    r = await pool.request(method, url, "/x", b"", b"{}")
    await r.read()
    r.release()
    if method in ("POST", "PATCH"):
        with pytest.raises(Disconnected, match="before answering"):
            await pool.request(method, url, "/x", b"", b"{}")
    else:
        r = await pool.request(method, url, "/x", b"", b"{}")
        assert await r.read() == b"{}"
    assert len(e.requests) == sent and e.connections == sent - 1


async def test_a_kept_connection_found_closed_before_writing_is_replaced_for_a_post(engine_factory) -> None:
    """The engine cannot have a request that was never written: that one is sent on a new connection."""
    e, pool, url = await engine_factory(echo)
    r = await pool.request("POST", url, "/x", b"", b"{}")
    await r.read()
    r.release()
    kept = pool.idle[pool.origin(url).key][-1]
    kept.transport.close()  # closed under the pool's feet, the close not yet seen as connection_lost
    r = await pool.request("POST", url, "/x", b"", b"{}")
    assert await r.read() == b'{"got": 2}' and len(e.requests) == 2 and e.connections == 2


async def test_a_released_answer_lets_go_of_its_call(engine_factory) -> None:
    """A watcher that fires after the answer was read must not close a connection that serves another request."""
    e, pool, url = await engine_factory(echo)
    call = Call()
    r = await pool.request("POST", url, "/x", b"", b"{}", call=call)
    await r.read()
    r.release()
    call.close()  # the client leaves after its answer
    r = await pool.request("POST", url, "/x", b"", b"{}")
    assert await r.read() == b'{"got": 2}' and e.connections == 1
    r.release()


async def test_an_engine_that_does_not_accept_times_out_naming_the_wait() -> None:
    """A listening socket whose backlog is full drops new connections' SYNs: the connect hangs until the timeout."""
    import socket

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # more than the backlog holds, none accepted
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.2)
        pool = EnginePool(connect_timeout_s=0.3)
        with pytest.raises(ConnectTimeout, match=r"no connection to 127\.0\.0\.1:\d+ within 0\.3 s"):
            await asyncio.wait_for(pool.request("POST", f"http://127.0.0.1:{port}", "/x", b"", b"{}"), 10)
        await pool.close()
    finally:
        for s in fillers:
            s.close()
        lsock.close()
