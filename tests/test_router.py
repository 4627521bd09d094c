"""The hub over HTTP with the official openai client, against the test responder started as `command` engines."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import wait_for
from tests.helpers import client, image_model, text_model


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def basic_hub(hub_factory):
    return hub_factory(text_model("echo") + image_model("pix"))


def test_list_models_includes_stopped_ones(basic_hub) -> None:
    models = {m.id: m for m in client(basic_hub).models.list()}
    assert set(models) == {"echo", "pix"}
    assert basic_hub.models()["echo"]["state"] == "stopped"


def test_chat_completions_and_streaming(basic_hub) -> None:
    c = client(basic_hub)
    r = c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello there"}])
    assert r.choices[0].message.content == "echo: hello there"
    chunks = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "one two three"}], stream=True) if ch.choices]
    assert len([x for x in chunks if x]) >= 3
    assert "".join(chunks) == "echo: one two three"
    assert c.completions.create(model="echo", prompt="hi").choices[0].text == "echo: hi"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(model="echo", prompt="a b", stream=True))
    assert streamed == "echo: a b"


def test_stream_is_passed_on_as_it_arrives(hub_factory) -> None:
    hub = hub_factory(text_model("slow", "--chunk-delay", "0.4"))
    client(hub).models.list()
    httpx.post(hub.url + "/hub/models/slow/load", timeout=60).raise_for_status()
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "a b c d e"}]}
    arrivals = []
    t0 = time.monotonic()
    with httpx.stream("POST", hub.v1 + "/chat/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic() - t0)
    assert len(arrivals) >= 6
    # seven events 0.4 s apart: a buffering proxy would deliver them all at the end
    assert arrivals[-1] - arrivals[0] > 1.5


def test_images_generate_and_edit(basic_hub) -> None:
    c = client(basic_hub)
    gen = c.images.generate(model="pix", prompt="a cat", n=2, size="256x256")
    assert len(gen.data) == 2
    assert png_size(base64.b64decode(gen.data[0].b64_json)) == (256, 256)
    img = io.BytesIO(base64.b64decode(gen.data[0].b64_json))
    edit = c.images.edit(model="pix", image=("in.png", img, "image/png"), prompt="make it red", size="256x256")
    assert png_size(base64.b64decode(edit.data[0].b64_json)) == (256, 256)
    two = c.images.edit(model="pix", prompt="x", image=[("a.png", io.BytesIO(img.getvalue()), "image/png"),
                                                        ("b.png", io.BytesIO(img.getvalue()), "image/png")],
                        mask=("m.png", io.BytesIO(img.getvalue()), "image/png"))
    assert len(two.data) == 1
    raw = c.images.with_raw_response.edit(model="pix", prompt="x", image=[
        ("a.png", io.BytesIO(img.getvalue()), "image/png"), ("b.png", io.BytesIO(img.getvalue()), "image/png")])
    assert raw.headers["x-test-images"] == "a.png,b.png", "both images reach the engine"


def error_of(fn) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as e:
        fn()
    return e.value


def test_error_cases(basic_hub) -> None:
    c = client(basic_hub)
    e = error_of(lambda: c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}]))
    assert e.status_code == 404
    assert e.body["message"] == "model 'nope' does not exist (available: echo, pix)"
    assert e.body["code"] == "model_not_found" and e.body["param"] == "model"
    e = error_of(lambda: c.chat.completions.create(model="pix", messages=[{"role": "user", "content": "x"}]))
    assert e.status_code == 400 and "use /v1/images/generations" in e.body["message"]
    e = error_of(lambda: c.images.generate(model="echo", prompt="x"))
    assert e.status_code == 400 and "use /v1/chat/completions" in e.body["message"]
    e = error_of(lambda: c.images.edit(model="echo", prompt="x", image=("a.png", b"\x89PNG", "image/png")))
    assert e.status_code == 400 and "is a text model" in e.body["message"]
    # the engine's own errors pass through with their status and body
    e = error_of(lambda: c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}],
                                                   max_tokens=-1))
    assert e.status_code == 400 and e.body["param"] == "max_tokens"

    def post(path: str, **kw) -> httpx.Response:
        return httpx.post(basic_hub.v1 + path, timeout=10, **kw)

    for path, kw, param in [
        ("/chat/completions", {"content": b"{not json", "headers": {"content-type": "application/json"}}, None),
        ("/chat/completions", {"json": [1, 2]}, None),
        ("/chat/completions", {"json": {"messages": []}}, "model"),
        ("/chat/completions", {"json": {"model": "echo"}}, "messages"),
        ("/chat/completions", {"json": {"model": 5, "messages": []}}, "model"),
        ("/completions", {"json": {"model": "echo"}}, "prompt"),
        ("/images/generations", {"json": {"model": "pix"}}, "prompt"),
        ("/images/edits", {"data": {"prompt": "x"}, "files": {"image": ("a.png", b"x")}}, "model"),
        ("/images/edits", {"data": {"prompt": "x", "model": "pix"}}, None),
        ("/images/edits", {"json": {"model": "pix"}}, None),
    ]:
        r = post(path, **kw)
        assert r.status_code == 400, (path, kw, r.text)
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["message"]
        assert err["param"] == param or param is None, (path, err)
    r = httpx.get(basic_hub.v1 + "/nothing-here", timeout=10)
    assert r.status_code == 404 and "error" in r.json()


def test_engine_failing_to_start_gives_503_with_reason_and_log(hub_factory) -> None:
    hub = hub_factory(text_model("broken", "--fail-start"))
    e = error_of(lambda: client(hub).chat.completions.create(model="broken",
                                                             messages=[{"role": "user", "content": "x"}]))
    assert e.status_code == 503
    assert "failed to start: the engine exited with code 1 before it was ready" in e.body["message"]
    assert "CUDA out of memory (simulated start failure)" in e.body["message"], "the log tail is included"
    entry = hub.models()["broken"]
    assert entry["state"] == "failed" and "exited with code 1" in entry["reason"]


def test_start_timeout_gives_503_with_retry_after(hub_factory) -> None:
    hub = hub_factory("[hub]\nstart_timeout = 2\n" + text_model("sleepy", "--start-delay", "30"))
    r = httpx.post(hub.v1 + "/chat/completions", timeout=30,
                   json={"model": "sleepy", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 503 and r.headers["retry-after"]
    assert "start_timeout" in r.json()["error"]["message"]
    assert hub.models()["sleepy"]["state"] == "failed"


def test_twenty_concurrent_requests_to_a_cold_model_cause_one_start(hub_factory) -> None:
    hub = hub_factory(text_model("echo", "--start-delay", "1"))
    c = client(hub)

    def ask(i: int) -> str:
        return c.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"q{i}"}]) \
            .choices[0].message.content

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, range(20)))
    assert answers == [f"echo: q{i}" for i in range(20)]
    entry = hub.models()["echo"]
    assert entry["starts"] == 1 and entry["state"] == "ready"
    assert len(hub.engine_pids()) == 1


def test_eviction_under_budget_is_lru_and_spares_pinned(hub_factory) -> None:
    hub = hub_factory("[hub]\nmemory_budget_gb = 10\n" + text_model("a", memory=4) + text_model("b", memory=4)
                      + text_model("c", memory=4) + text_model("p", memory=2, more="pinned = true"))
    c = client(hub)

    def ask(m: str) -> None:
        c.chat.completions.create(model=m, messages=[{"role": "user", "content": "x"}])

    ask("p")
    ask("a")
    ask("b")  # 2 + 4 + 4 = 10: all fit
    assert {k: v["state"] for k, v in hub.models().items()} == {"a": "ready", "b": "ready", "c": "stopped",
                                                                 "p": "ready"}
    ask("a")  # a is now more recently used than b
    ask("c")  # needs 4 more: b (least recently used, unpinned) goes
    states = {k: v["state"] for k, v in hub.models().items()}
    assert states == {"a": "ready", "b": "stopped", "c": "ready", "p": "ready"}
    assert "evicted to make room for 'c'" in hub.models()["b"]["reason"]
    assert len(hub.engine_pids()) == 3


def test_busy_model_is_not_evicted(hub_factory, tmp_path) -> None:
    release = tmp_path / "release"  # slow's engine holds its answer until this file exists
    hub = hub_factory("[hub]\nmemory_budget_gb = 5\ndrain_timeout = 1\n"
                      + text_model("slow", "--hold-file", str(release), memory=4) + text_model("other", memory=4))
    c = client(hub)
    httpx.post(hub.url + "/hub/models/slow/load", timeout=60).raise_for_status()
    t = threading.Thread(target=lambda: c.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "x"}]))
    try:
        t.start()
        wait_for(lambda: hub.models()["slow"]["in_flight"] == 1, "slow's request in flight")
        e = error_of(lambda: c.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}]))
        assert e.status_code == 503 and "model 'slow' is busy" in e.body["message"]
    finally:
        release.touch()
        t.join()
    assert hub.models()["slow"]["state"] == "ready", "the busy model kept serving"
    c.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])  # now it is idle: swap
    assert hub.models()["slow"]["state"] == "stopped"


def test_idle_ttl_unloads(hub_factory) -> None:
    hub = hub_factory("[hub]\nidle_ttl = 2\n" + text_model("echo") + text_model("keep", more='ttl = "1h"'))
    c = client(hub)
    for m in ("echo", "keep"):
        c.chat.completions.create(model=m, messages=[{"role": "user", "content": "x"}])
    deadline = time.monotonic() + 15
    while hub.models()["echo"]["state"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.3)
    models = hub.models()
    assert models["echo"]["state"] == "stopped" and "ttl" in models["echo"]["reason"]
    assert models["keep"]["state"] == "ready"


def test_crash_is_noticed_and_the_next_request_restarts(hub_factory, tmp_path) -> None:
    release = tmp_path / "release"  # the engine holds its answers until this file exists
    hub = hub_factory(text_model("echo", "--hold-file", str(release)))
    c = client(hub)
    httpx.post(hub.url + "/hub/models/echo/load", timeout=60).raise_for_status()
    port = hub.models()["echo"]["process"]["port"]
    results: dict[str, object] = {}

    def in_flight() -> None:
        try:
            c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
        except openai.APIStatusError as err:
            results["err"] = err

    t = threading.Thread(target=in_flight)
    t.start()
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/test/stats", timeout=5).json()["requests"] == 1,
             "the request reached the engine")
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{port}/test/crash", timeout=5)
    t.join()
    err = results["err"]
    assert isinstance(err, openai.APIStatusError) and err.status_code == 502
    assert "engine broke off" in err.body["message"]
    deadline = time.monotonic() + 5
    while hub.models()["echo"]["state"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.1)
    entry = hub.models()["echo"]
    assert entry["state"] == "failed" and "exited with code 3 unexpectedly" in entry["reason"]
    release.touch()  # the restarted engine answers at once
    r = c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "again"}])
    assert r.choices[0].message.content == "echo: again"
    assert hub.models()["echo"]["starts"] == 2


def test_api_key(hub_factory) -> None:
    hub = hub_factory('[hub]\napi_key_env = "TEST_HUB_KEY"\n' + text_model("echo"), env={"TEST_HUB_KEY": "s3cret"})
    e = error_of(lambda: client(hub, "wrong").models.list())
    assert e.status_code == 401 and "TEST_HUB_KEY" in e.body["message"]
    assert httpx.get(hub.url + "/hub/models", timeout=5).status_code == 401
    r = client(hub, "s3cret").chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == "echo: x"
    assert httpx.get(hub.url + "/hub/models", headers={"authorization": "Bearer s3cret"}, timeout=5).status_code == 200
    assert httpx.get(hub.url + "/health", timeout=5).status_code == 200


def test_openai_engine_proxies_an_existing_server(hub_factory, tmp_path) -> None:
    upstream = hub_factory(text_model("inner"))
    second = tmp_path / "second"
    second.mkdir()
    from tests.conftest import start_hub

    hub = start_hub(second, '[models.outer]\ntype = "text"\nengine = "openai"\nsource = "inner"\n'
                            f'[models.outer.args]\nbase_url = "{upstream.v1}"\napi_key_env = "UPSTREAM_KEY"\n',
                    env={"UPSTREAM_KEY": "k"})
    try:
        assert hub.models()["outer"]["state"] == "ready" and hub.models()["outer"]["runtime"] == "external"
        c = client(hub)
        r = c.chat.completions.create(model="outer", messages=[{"role": "user", "content": "via"}])
        assert r.choices[0].message.content == "echo: via"
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="outer", messages=[{"role": "user", "content": "a b"}], stream=True) if ch.choices)
        assert streamed == "echo: a b"
        assert upstream.models()["inner"]["state"] == "ready", "the inner hub started its engine on demand"
        r = httpx.post(hub.url + "/hub/models/outer/unload", timeout=10)
        assert r.status_code == 503 and "does not manage it" in r.json()["error"]["message"]
    finally:
        hub.stop()


def test_admin_load_unload_and_shutdown_leaves_nothing(hub_factory) -> None:
    hub = hub_factory(text_model("echo") + image_model("pix"))
    assert httpx.post(hub.url + "/hub/models/echo/load", timeout=60).json()["state"] == "ready"
    assert httpx.post(hub.url + "/hub/models/pix/load", timeout=60).json()["state"] == "ready"
    pids = hub.engine_pids()
    assert len(pids) == 2
    assert httpx.post(hub.url + "/hub/models/echo/unload", timeout=60).json()["state"] == "stopped"
    assert "responder: model test" in httpx.get(hub.url + "/hub/models/echo/logs", timeout=5).text
    r = httpx.post(hub.url + "/hub/models/nope/load", timeout=5)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    hub.stop()
    import psutil

    assert not [p for p in pids if psutil.pid_exists(p)]
