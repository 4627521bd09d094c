"""The gateway's two clients to engines, held to the same behaviour by the same scripted engine (test_upstream's):
hub/upstream.py's pool (the hub's own engines) and hub/hosted.py's httpx client (servers the hub does not manage).
Then the hosted client through a proxy set in the environment, in process and through a real `hub serve`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading

import httpx
import pytest

from hub.hosted import HostedPool
from hub.upstream import (
    AnswerTimeout,
    Call,
    Closed,
    ConnectFailed,
    Disconnected,
    EnginePool,
    IdleTimeout,
)
from tests.conftest import HubProcess, responder_command, start_hub
from tests.helpers import Engine, answer, echo

KINDS = ["pool", "httpx"]


def make_pool(kind: str, **kw):
    return EnginePool(**kw) if kind == "pool" else HostedPool(**kw)


@pytest.fixture(params=KINDS)
async def made(request):
    """(make(script, **pool_kw) -> (engine, client, url)) for one kind of client; everything closed after."""
    engines, pools = [], []

    async def make(script, **kw):
        e = Engine(script)
        engines.append(e)
        url = await e.start()
        pool = make_pool(request.param, **kw)
        pools.append(pool)
        return e, pool, url

    make.kind = request.param
    yield make
    for p in pools:
        await p.close()
    for e in engines:
        await e.stop()


async def until_closed(reader, e: Engine) -> bool:
    with contextlib.suppress(ConnectionError):
        await asyncio.wait_for(reader.read(1), 30)
    e.closed.set()
    return False


async def test_a_sized_answer(made):
    e, pool, url = await made(echo)
    for _ in range(2):
        r = await pool.request("POST", url, "/x", b"content-type: application/json\r\n", b"{}")
        assert r.status == 200 and (b"content-type", b"application/json") in r.headers
        assert await r.read() == b'{"got": 2}'
        r.release()
    assert len(e.requests) == 2


async def test_chunks_arrive_as_sent(made):
    release = asyncio.Event()

    async def two(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"3\r\ntwo\r\n0\r\n\r\n")
        await writer.drain()
        return True

    _, pool, url = await made(two)
    r = await pool.request("POST", url, "/x", b"", b"{}")
    it = r.chunks()
    assert await asyncio.wait_for(it.__anext__(), 5) == b"one"  # before the rest exists
    release.set()
    assert b"".join([c async for c in it]) == b"two"
    r.release()


async def test_an_answer_delimited_by_the_close(made):
    async def old(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: 1\n\ndata: 2\n\n")
        return False

    _, pool, url = await made(old)
    r = await pool.request("POST", url, "/x", b"", b"{}")
    assert await r.read() == b"data: 1\n\ndata: 2\n\n"
    r.release()


async def test_an_engine_that_dies_mid_answer_is_an_error(made):
    async def dies(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial")
        return False

    _, pool, url = await made(dies)
    r = await pool.request("POST", url, "/x", b"", b"{}")
    with pytest.raises(Disconnected):
        await r.read()
    r.release()


async def test_a_post_the_engine_took_and_dropped_is_not_sent_again(made):
    async def hangs_up(reader, writer, head, body) -> bool:
        return False

    e, pool, url = await made(hangs_up)
    with pytest.raises(Disconnected):
        await pool.request("POST", url, "/x", b"", b"{}")
    assert len(e.requests) == 1


async def test_an_engine_that_never_answers_times_out(made):
    ref: list[Engine] = []

    async def silent(reader, writer, head, body) -> bool:
        return await until_closed(reader, ref[0])

    e, pool, url = await made(silent)
    ref.append(e)
    with pytest.raises(AnswerTimeout, match=r"no answer within 0\.3 s"):
        await pool.request("POST", url, "/x", b"", b"{}", answer_s=0.3)
    await asyncio.wait_for(e.closed.wait(), 10)  # the engine sees the request dropped


async def test_an_engine_silent_mid_answer_times_out(made):
    ref: list[Engine] = []

    async def stalls(reader, writer, head, body) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        return await until_closed(reader, ref[0])

    e, pool, url = await made(stalls)
    ref.append(e)
    r = await pool.request("POST", url, "/x", b"", b"{}")
    got = []
    with pytest.raises(IdleTimeout, match=r"nothing more of its answer for 0\.3 s"):
        async for chunk in r.chunks(idle_s=0.3):
            got.append(chunk)
    assert got == [b"one"]
    r.release()
    await asyncio.wait_for(e.closed.wait(), 10)


@pytest.mark.parametrize("phase", ["head", "body"])
async def test_a_call_closed_elsewhere_drops_the_request(made, phase):
    ref: list[Engine] = []

    async def slow(reader, writer, head, body) -> bool:
        if phase == "body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{")
            await writer.drain()
        return await until_closed(reader, ref[0])

    e, pool, url = await made(slow)
    ref.append(e)
    call = Call()

    async def use() -> bytes:
        r = await pool.request("POST", url, "/x", b"", b"{}", call=call)
        try:
            return await r.read()
        finally:
            r.release()

    task = asyncio.create_task(use())
    await asyncio.sleep(0.3)
    call.close()
    with pytest.raises(Closed):
        await asyncio.wait_for(task, 10)
    await asyncio.wait_for(e.closed.wait(), 10)


async def test_a_refused_connection_is_a_connect_failure(made):
    pool = make_pool(made.kind)
    try:
        with pytest.raises(ConnectFailed):
            await pool.request("POST", "http://127.0.0.1:1", "/x", b"", b"{}")
    finally:
        await pool.close()


async def test_connections_to_one_engine_are_capped(made):
    busy, most = [0], [0]

    async def slow(reader, writer, head, body) -> bool:
        busy[0] += 1
        most[0] = max(most[0], busy[0])
        await asyncio.sleep(0.2)
        busy[0] -= 1
        writer.write(answer(b"{}"))
        await writer.drain()
        return True

    e, pool, url = await made(slow, max_connections=2)

    async def one() -> bytes:
        r = await pool.request("POST", url, "/x", b"", b"{}", answer_s=30)
        try:
            return await r.read()
        finally:
            r.release()

    assert await asyncio.gather(*(one() for _ in range(6))) == [b"{}"] * 6
    assert most[0] == 2 and len(e.requests) == 6


# ---- a proxy from the environment ----

class Proxy:
    """A forward HTTP proxy on loopback (absolute-form requests, piped both ways) that counts what it carried."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _serve(self, reader, writer) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, version = head.split(b"\r\n")[0].decode().split(" ")
                self.seen.append(f"{method} {target}")
                u = httpx.URL(target)
                length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                               if ln.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                rest = head.split(b"\r\n", 1)[1]
                r2, w2 = await asyncio.open_connection(u.host, u.port)
                w2.write(f"{method} {u.raw_path.decode()} {version}\r\n".encode() + rest + body)
                await w2.drain()
                status = await r2.readuntil(b"\r\n\r\n")
                n = next((int(ln.split(b":")[1]) for ln in status.split(b"\r\n")
                          if ln.lower().startswith(b"content-length:")), 0)
                writer.write(status + await r2.readexactly(n))
                await writer.drain()
                w2.close()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def proxy():
    p = Proxy()
    yield p
    p.stop()


async def test_the_hosted_client_goes_through_the_environments_proxy(proxy, monkeypatch):
    e = Engine(echo)
    url = await e.start()
    for name in ("HTTP_PROXY", "http_proxy"):  # the lower-case one wins where both are set
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    pool = HostedPool()
    try:
        r = await pool.request("POST", url, "/v1/x", b"", b"{}")
        assert await r.read() == b'{"got": 2}'
        r.release()
        assert proxy.seen == [f"POST {url}/v1/x"]
    finally:
        await pool.close()
        await e.stop()


def test_an_openai_engine_goes_through_the_proxy_and_a_managed_one_does_not(proxy, tmp_path_factory):
    """A real `hub serve` with HTTP_PROXY set: its `openai` model (a server it does not manage) is reached through
    the proxy; its `command` model (an engine it started on loopback) is not."""
    tmp = tmp_path_factory.mktemp("proxy")
    (tmp / "remote").mkdir()
    (tmp / "hub").mkdir()
    remote = start_hub(tmp / "remote", f'[models.far]\ntype = "text"\nengine = "command"\n[models.far.args]\n'
                                       f"command = {responder_command()}\n")
    hub: HubProcess | None = None
    try:
        registry = (f'[models.hosted]\ntype = "text"\nengine = "openai"\nsource = "far"\n[models.hosted.args]\n'
                    f'base_url = "{remote.v1}"\n'
                    f'[models.local]\ntype = "text"\nengine = "command"\n[models.local.args]\n'
                    f"command = {responder_command()}\n")
        via = f"http://127.0.0.1:{proxy.port}"
        hub = start_hub(tmp / "hub", registry, env={"HTTP_PROXY": via, "http_proxy": via, "NO_PROXY": "",
                                                   "no_proxy": ""})
        for model in ("hosted", "local"):
            r = httpx.post(hub.v1 + "/chat/completions", timeout=60,
                           json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            assert "hi" in json.dumps(r.json()["choices"][0]["message"])
        assert proxy.seen == [f"POST {remote.v1}/chat/completions"]
    finally:
        if hub is not None:
            hub.stop_leaving_nothing()
        remote.stop_leaving_nothing()
